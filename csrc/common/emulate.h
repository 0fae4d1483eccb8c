// CPU emulation of the CUDA launches (host code only; the tests' view of the CUDA
// path on machines without a GPU).
//
// EmuExec has the interface of CudaExec (common/cuda_launch.cuh): the family
// launchers (<family>_launch.h) are written once against it, so the emulation runs
// the CUDA path's own launch configuration, tile planning, layouts and scratch
// tables, and the kernels' own per-thread bodies (K::run), thread by thread over the
// whole grid. Kernels that use warp shuffles run their 32 lanes in lockstep, one OS
// thread per lane, with the shuffle emulated at a barrier (EmulatedWarp). Every
// output is poisoned first (NaN, or the lowest integer) so that an element no thread
// writes shows up.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include "launch.h"

namespace partdist {
namespace emu {

// Fault injection (tests only): kShiftIndex makes the thread of global index 0 run
// with index 1, a wrong index in the launch that the tests must see; kShiftBlock does
// the same to block 0 of the block-cooperative kernels only (run_blocks).
enum Fault : int64_t { kNoFault = 0, kShiftIndex = 1, kShiftBlock = 2 };

inline std::atomic<int64_t>& fault() {
  static std::atomic<int64_t> f{kNoFault};
  return f;
}

inline ThreadPos thread_pos(int64_t index, int64_t count) {
  if (index == 0 && fault().load() == kShiftIndex && count > 1) index = 1;
  return ThreadPos{index, count};
}

// One warp's lanes in lockstep: each lane is an OS thread; a shuffle deposits the
// lane's value and waits until every live lane has deposited (a full-warp shuffle),
// then reads its source lane: lane + off for shfl_down (its own value past the last
// lane, as __shfl_down_sync), lane ^ mask for shfl_xor (__shfl_xor_sync). sync waits
// until every live lane has reached it (__syncwarp). A lane that leaves the kernel
// while the others shuffle or sync is a divergent full-mask shuffle / __syncwarp
// (undefined on the device): reported as an error.
class EmulatedWarp {
 public:
  struct Lane {
    EmulatedWarp* w;
    int lane;
    template <typename V>
    V shfl_down(V v, unsigned off) const {
      const int src = lane + int(off);
      return w->shuffle(lane, v, src < kWarpSize ? src : lane);
    }
    template <typename V>
    V shfl_xor(V v, unsigned mask) const {
      return w->shuffle(lane, v, lane ^ int(mask & (kWarpSize - 1)));
    }
    void sync() const { w->sync(); }
  };

  // fn(const Lane&) for lanes 0..31, in lockstep at the shuffles.
  template <typename Fn>
  void run(const Fn& fn) {
    live_ = kWarpSize;
    std::vector<std::thread> lanes;
    std::vector<std::exception_ptr> errors(kWarpSize);
    lanes.reserve(kWarpSize);
    for (int l = 0; l < kWarpSize; ++l)
      lanes.emplace_back([&, l] {
        try {
          fn(Lane{this, l});
        } catch (...) {
          errors[l] = std::current_exception();
        }
        leave();
      });
    for (auto& t : lanes) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    TORCH_CHECK(!diverged_,
                "CUDA emulation: a lane left the kernel while the other lanes of its "
                "warp were in a full-warp shuffle or __syncwarp (divergent warp)");
  }

 private:
  // The value of lane src after every live lane has deposited its own.
  template <typename V>
  V shuffle(int lane, V v, int src) {
    static_assert(sizeof(V) <= sizeof(uint64_t), "shuffle of a value wider than 64 bits");
    std::unique_lock<std::mutex> lk(mu_);
    if (left_ > 0) diverged_ = true;
    uint64_t bits = 0;
    std::memcpy(&bits, &v, sizeof(V));
    slot_[lane] = bits;
    barrier(lk);
    V r;
    std::memcpy(&r, &slot_[src], sizeof(V));
    barrier(lk);
    return r;
  }

  void sync() {
    std::unique_lock<std::mutex> lk(mu_);
    if (left_ > 0) diverged_ = true;
    barrier(lk);
  }

  void barrier(std::unique_lock<std::mutex>& lk) {
    const int64_t gen = gen_;
    if (++arrived_ >= live_) {
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lk, [&] { return gen_ != gen; });
    }
  }

  void leave() {
    std::lock_guard<std::mutex> lk(mu_);
    --live_;
    ++left_;
    if (arrived_ > 0) {  // others wait in a shuffle this lane will never reach
      diverged_ = true;
      if (arrived_ >= live_) {
        arrived_ = 0;
        ++gen_;
        cv_.notify_all();
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  int live_ = kWarpSize, arrived_ = 0, left_ = 0;
  int64_t gen_ = 0;
  bool diverged_ = false;
  uint64_t slot_[kWarpSize] = {};
};

// The block of a block-cooperative kernel in the emulation (DeviceBlock's interface): the
// threads of a phase run in order; shared memory starts as NaN bytes.
struct EmulatedBlock {
  unsigned char* smem;
  int64_t block;
  int threads;
  template <typename T>
  struct PerThread {
    std::vector<T> v;
    explicit PerThread(const EmulatedBlock& b) : v(size_t(b.threads)) {}
    T& operator[](int t) { return v[size_t(t)]; }
  };
  template <typename F>
  void each(const F& f) const {
    for (int t = 0; t < threads; ++t) f(t);
  }
  template <typename T>
  T* shared() const {
    return reinterpret_cast<T*>(smem);
  }
};

// Fills an output with a value no kernel writes (NaN / the lowest integer).
inline void poison(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return;
  if (at::isFloatingType(t.scalar_type()))
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  else if (t.scalar_type() == at::kLong)
    t.fill_(std::numeric_limits<int64_t>::min());
  // bool outputs cannot hold a value outside {false, true}: left as they are
}

// The L2 cache of the emulated GPU: an H100's.
constexpr int64_t kEmulatedL2Bytes = int64_t(50) << 20;

// The executor of the emulated launches (see CudaExec for the interface).
struct EmuExec {
  static int64_t l2_cache_bytes() { return kEmulatedL2Bytes; }

  template <typename... Tensors>
  static void output(const Tensors&... ts) {
    (poison(ts), ...);
  }

  // K::run(ThreadPos, args...) for every thread of a 1-D grid of `blocks` x `threads`.
  // Blocks run in parallel (CUDA gives no order among them), threads in order.
  template <typename K, typename... Args>
  void run(int64_t blocks, int threads, const Args&... args) const {
    const int64_t count = blocks * threads;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int t = 0; t < threads; ++t) K::run(thread_pos(b * threads + t, count), args...);
    });
  }

  // K::run(block, args...) for every block; blocks in parallel, each with its own shared
  // memory filled with 0xFF bytes (NaN as float and double). The faults kShiftIndex and
  // kShiftBlock run block 0 as block 1.
  template <typename K, typename... Args>
  void run_blocks(int64_t blocks, int threads, size_t smem_bytes, const Args&... args) const {
    TORCH_CHECK(smem_bytes <= size_t(48) << 10,
                "CUDA emulation: more than 48 KiB of shared memory");
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<unsigned char> smem(smem_bytes);  // exactly: ASan sees an overrun
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(smem.begin(), smem.end(), static_cast<unsigned char>(0xFF));
        const int64_t f = fault().load();
        const bool shift = b == 0 && blocks > 1 && (f == kShiftIndex || f == kShiftBlock);
        const int64_t index = shift ? 1 : b;
        EmulatedBlock blk{smem.data(), index, threads};
        K::run(blk, args...);
      }
    });
  }

  // K::run(warp, ThreadPos, args...) with the 32 lanes of each warp in lockstep.
  template <typename K, typename... Args>
  void run_warps(int64_t blocks, int threads, const Args&... args) const {
    TORCH_CHECK(threads % kWarpSize == 0, "CUDA emulation: block size not a multiple of 32");
    const int64_t count = blocks * threads, warps = count / kWarpSize;
    for (int64_t w = 0; w < warps; ++w) {
      EmulatedWarp warp;
      warp.run([&](const EmulatedWarp::Lane& lane) {
        K::run(lane, thread_pos(w * kWarpSize + lane.lane, count), args...);
      });
    }
  }
};

}  // namespace emu
}  // namespace partdist
