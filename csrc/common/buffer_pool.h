// CPU tensors whose memory goes back to a small process-wide cache when they are freed,
// for the outputs of hot training ops (host code only).
//
// A training step allocates the same few buffers again and again (the gradients of the
// features, saved cells). From the system allocator such a buffer of a MiB or more may
// come back as freshly mapped pages every step: the first write to each page faults and
// clears it, which can cost more than the kernel that fills the buffer. pooled_empty
// returns memory that a previous tensor of the same size already touched, when one has
// been freed since. The cache keeps the most recently freed blocks, at most
// kPoolMaxBlocks of them and kPoolMaxBytes bytes; the tensors are ordinary CPU tensors
// (their storage cannot be resized).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>

#include <cstdint>
#include <utility>

namespace partdist {

constexpr int kPoolMaxBlocks = 8;
constexpr int64_t kPoolMaxBytes = int64_t(64) << 20;

// An uninitialized contiguous CPU tensor of `sizes` and options' dtype.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Blocks and bytes held by the cache (tests).
std::pair<int64_t, int64_t> pool_stats();

}  // namespace partdist
