// Per-query math of the ranking metrics (CMC first rank, AP, INP) under the
// Market-1501 protocol, used by the CPU launcher (rank_ops.cpp; CUDA distance matrices
// are copied to the CPU by partdist.eval.evaluate_rank).
//
// Order of the gallery for one query: by increasing distance, NaN after every number
// (numpy's sort order), ties broken by gallery index (a stable sort). Gallery items
// with the query's pid and camera are removed (and, with drop_junk, pid -1 items); the
// true matches are the kept items with the query's pid.
//
// No row is sorted: the rank of a true match among the kept items is the number of
// kept items ordered before it, plus one. Up to kCountMatches true matches, that
// number is counted for each match by one vectorized pass over the kept items; with
// more, the true matches are sorted, every kept item is placed among them by binary
// search, and a histogram of those positions gives all k ranks: O(G min(k, log k))
// per query instead of the O(G log G) of a sort.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/hd.h"

namespace partdist {
namespace rank {

// Gallery order of one query: (distance, index) pairs, NaN last, ties by index.
template <typename T>
PD_HD bool key_less(T a, int64_t ia, T b, int64_t ib) {
  const bool na = a != a, nb = b != b;
  if (na || nb) return nb && (!na || ia < ib);
  return a < b || (a == b && ia < ib);
}

// What one query contributes: the 1-based rank of its first true match (0 when it has
// none: the query is not valid), its AP and its INP.
struct QueryMetrics {
  int64_t first = 0;
  double ap = 0.0;
  double inp = 0.0;
};

struct QueryIds {
  int64_t pid, cam;
};

// Number of the sorted true-match distances md[0..k) (NaN last) that are < v, for a
// number v: branchless binary search.
template <typename T>
PD_HD int64_t count_less(const T* md, int64_t k, T v) {
  const T* base = md;
  int64_t n = k;
  while (n > 1) {
    const int64_t half = n / 2;
    base = base[half] < v ? base + half : base;
    n -= half;
  }
  return (base - md) + (*base < v ? 1 : 0);
}

// Up to this many true matches a query counts, for each match, the kept items before
// it with one vectorized pass over them (O(k G)); more take a binary search of every
// kept item among the sorted matches (O(G log k)).
constexpr int64_t kCountMatches = 160;
constexpr int64_t kCountBlock = int64_t(1) << 30;

// Scratch buffers of one task, reused across its queries.
template <typename T>
struct Scratch {
  std::vector<int64_t> matches, hist, ranks;
  std::vector<T> kd, md;
};

// Kept items among kd[0..n) ordered before a match of distance m at position pos:
// the ones before it at a distance <= m, the ones after it at a distance < m (NaN: the
// numbers, then the NaNs before it).
template <typename T>
int64_t kept_before(const T* kd, int64_t n, int64_t pos, T m) {
  if (m != m) {
    int64_t c = pos;
    for (int64_t j = pos + 1; j < n; ++j) c += kd[j] == kd[j];
    return c;
  }
  // 32-bit counters in blocks: the loops vectorize to full-width compares
  int64_t c = 0;
  for (int64_t j0 = 0; j0 < n; j0 += kCountBlock) {
    const int32_t e = static_cast<int32_t>(std::min(n - j0, kCountBlock));
    const T* b = kd + j0;
    const int64_t p = pos - j0;  // the match's position in this block (may be outside)
    const int32_t split = static_cast<int32_t>(std::max<int64_t>(0, std::min<int64_t>(p, e)));
    int32_t cb = 0;
    for (int32_t j = 0; j < split; ++j) cb += b[j] <= m;
    for (int32_t j = split + (p >= 0 && p < e ? 1 : 0); j < e; ++j) cb += b[j] < m;
    c += cb;
  }
  return c;
}

// 1-based ranks (among the kept items) of the true matches, ascending, into ranks[0..k).
// kd: distances of the kept items in gallery order; mpos: position in kd of each match
// (gallery order). Ties are broken by position (a stable sort), NaN last.
template <typename T>
void match_ranks(const T* kd, int64_t n, std::vector<int64_t>& mpos, Scratch<T>& s,
                 int64_t* ranks) {
  const int64_t k = static_cast<int64_t>(mpos.size());
  if (k <= kCountMatches) {
    for (int64_t t = 0; t < k; ++t) ranks[t] = 1 + kept_before(kd, n, mpos[t], kd[mpos[t]]);
    std::sort(ranks, ranks + k);
    return;
  }
  std::sort(mpos.begin(), mpos.end(),
            [&](int64_t a, int64_t b) { return key_less(kd[a], a, kd[b], b); });
  s.md.resize(static_cast<size_t>(k));
  int64_t finite = k;  // matches before the first NaN one
  for (int64_t t = 0; t < k; ++t) {
    s.md[t] = kd[mpos[t]];
    if (s.md[t] != s.md[t] && finite == k) finite = t;
  }
  const T* md = s.md.data();
  const int64_t* mi = mpos.data();
  // hist[p]: kept items with exactly p true matches ordered before them
  auto& hist = s.hist;
  hist.assign(static_cast<size_t>(k) + 1, 0);
  for (int64_t j = 0; j < n; ++j) {
    const T v = kd[j];
    int64_t p;
    if (v != v) {  // NaN: after every number, NaNs by position
      p = finite;
      while (p < k && mi[p] < j) ++p;
    } else {  // matches at a smaller distance, then tied ones at a smaller position
      p = finite > 0 ? count_less(md, finite, v) : 0;
      while (p < finite && md[p] == v && mi[p] < j) ++p;
    }
    ++hist[p];
  }
  // rank of the t-th match = kept items with at most t matches before them (itself included)
  int64_t rank = 0;
  for (int64_t t = 0; t < k; ++t) ranks[t] = rank += hist[t];
}

// Metrics of one query from its distance row d[g * stride] (g < G).
template <typename T>
QueryMetrics query_metrics(const T* d, int64_t stride, int64_t G, QueryIds q, const int64_t* g_pids,
                           const int64_t* g_cams, bool drop_junk, bool devkit, Scratch<T>& s) {
  // the kept items' distances, compacted, and where the true matches are among them
  s.kd.resize(static_cast<size_t>(G));
  auto& mpos = s.matches;
  mpos.clear();
  int64_t n = 0;
  T* kd = s.kd.data();
  for (int64_t g = 0; g < G; ++g) {
    const bool same = g_pids[g] == q.pid;
    const bool keep = !(same && g_cams[g] == q.cam) && !(drop_junk && g_pids[g] == -1);
    if (same && keep) mpos.push_back(n);
    kd[n] = d[g * stride];  // overwritten by the next kept item when not kept
    n += keep;
  }
  QueryMetrics out;
  const int64_t k = static_cast<int64_t>(mpos.size());
  if (k == 0) return out;
  s.ranks.resize(static_cast<size_t>(k));
  int64_t* ranks = s.ranks.data();
  match_ranks(kd, n, mpos, s, ranks);
  double ap = 0.0;
  for (int64_t t = 0; t < k; ++t) {
    const double prec = static_cast<double>(t + 1) / static_cast<double>(ranks[t]);
    if (devkit) {  // Market-1501 devkit: trapezoid between the precision before and at the hit
      const int64_t hits = ranks[t] - 1;
      const double old = hits != 0 ? static_cast<double>(t) / static_cast<double>(hits) : 1.0;
      ap += (old + prec) / 2;
    } else {  // torchreid: precision at the hit
      ap += prec;
    }
  }
  out.first = ranks[0];
  out.ap = ap / static_cast<double>(k);
  out.inp = static_cast<double>(k) / static_cast<double>(ranks[k - 1]);
  return out;
}

}  // namespace rank
}  // namespace partdist
