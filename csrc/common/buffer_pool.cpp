// The cache of common/buffer_pool.h.
#include "buffer_pool.h"

#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace partdist {

namespace {

struct Block {
  void* ptr;
  size_t bytes;
};

class Pool {
 public:
  void* get(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t k = free_.size(); k-- > 0;)  // the newest first
        if (free_[k].bytes == bytes) {
          void* p = free_[k].ptr;
          held_ -= bytes;
          free_.erase(free_.begin() + k);
          return p;
        }
    }
    void* p = std::aligned_alloc(64, bytes);
    TORCH_CHECK(p != nullptr, "partdist: out of memory allocating ", bytes, " bytes");
    return p;
  }
  // Keeps the newest blocks: the oldest ones are freed to make room.
  void put(void* p, size_t bytes) {
    std::vector<void*> evict;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (int64_t(bytes) > kPoolMaxBytes) {
        evict.push_back(p);
      } else {
        while (!free_.empty() &&
               (int(free_.size()) >= kPoolMaxBlocks || held_ + int64_t(bytes) > kPoolMaxBytes)) {
          evict.push_back(free_.front().ptr);
          held_ -= int64_t(free_.front().bytes);
          free_.erase(free_.begin());
        }
        free_.push_back({p, bytes});
        held_ += int64_t(bytes);
      }
    }
    for (void* q : evict) std::free(q);
  }
  std::pair<int64_t, int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {int64_t(free_.size()), held_};
  }

 private:
  std::mutex mu_;
  std::vector<Block> free_;
  int64_t held_ = 0;
};

// Never destroyed: tensors may be freed during the process's exit.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

std::vector<int64_t> pool_stats_op() {
  auto s = pool_stats();
  return {s.first, s.second};
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  // a multiple of 64 bytes (aligned_alloc's contract), at least one line
  const size_t bytes =
      (size_t(std::max<int64_t>(numel, 1)) * options.dtype().itemsize() + 63) & ~size_t(63);
  void* p = pool().get(bytes);
  return at::from_blob(
      p, sizes, [bytes](void* q) { pool().put(q, bytes); }, options.device(at::kCPU));
}

std::pair<int64_t, int64_t> pool_stats() { return pool().stats(); }

}  // namespace partdist

TORCH_LIBRARY_FRAGMENT(partdist, m) { m.def("_pool_stats() -> int[]", &partdist::pool_stats_op); }
