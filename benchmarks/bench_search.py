"""Searching large galleries (partdist.search.GalleryIndex): queries/s, memory and recall@10
of the two-stage search (global shortlist of K' re-scored by global + lam * DMLI) against
the exact fused search, one process vs 2 gloo processes (each holding half the gallery).

Synthetic clustered features: identities with --views views each; a view's H = 8 stripes of
C = 128 are its identity's stripes shifted by -1/0/+1 (misaligned crops: what DMLI aligns)
plus noise; its global feature (D = 512) is a fixed projection of its mean stripe plus noise
of its own (correlated with the stripes, as one backbone's features are); all L2-normalized. Queries are
fresh views of gallery identities. The gallery is generated chunk by chunk straight into
the storage dtype (float16 by default: 10^6 items take 3 GiB), each chunk from its own
seed, so every process can generate its own shard alone.

Two-stage shortlist scores (--pooled-weight, --pooling): w = 0, the global distance; w > 0, the
global distance plus w times that of the normalized mean stripes ("pooled", one GEMM of D + C
columns) or the mean squared distance of the normalized means of two overlapping windows of
stripes ("halves", D + 2 C columns).

Figures: two-stage search of all --queries queries (one timed run, queries/s); the exact
fused search (the reference) on the first --exact-queries queries only (it computes the
DMLI distance of every query x gallery pair: at 10^6 on 2 CPU cores that is minutes per
hundred queries), queries/s from that subset; recall@10 of two-stage vs exact on that
subset. CPU time: of all processes (user + system): on a shared machine the wall time
depends on the load, the CPU time much less. Memory: the index's features and ids, and the peak extra resident memory of the
search (page level, see benchmarks/common.py). With --world 2 the same searches run in 2
gloo processes (1 thread each, half the gallery each) and their answers are compared with
the single-process ones.

Targets (printed met / missed): recall@10 >= 0.99 at K' = 100 and with the default (tuned)
two-stage search; >= 100 queries/s at 10^6 in float16 on the CPU (K' = 100, and the tuned
search); >= 10,000 queries/s on a GPU (--device cuda).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    Results,
    add_device_arg,
    env_line,
    fmt_mem,
    print_table,
    resolve_devices,
    time_and_peak,
)

from partdist.search.sources import SOURCES, FeatureSource  # noqa: E402

D, H, C = 512, 8, 128
CHUNK = 1 << 15
TUNED = "two-stage, default options (tuned)"


def centres(n_ids, seed):
    """Identity centres of the stripes ``[n_ids, H, C]`` and the global projection ``[D, C]``."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(D, C, generator=g) / C**0.5
    cl = torch.nn.functional.normalize(torch.randn(n_ids, H, C, generator=g), dim=2)
    return proj, cl


def views(proj, cl, ident, gen, noise):
    """Noisy, misaligned views of identities ``ident``: global [n, D], local [n, H, C] (float32).

    Stripes: the identity's stripes shifted by -1/0/+1 plus noise, normalized. Global: a fixed
    projection of the mean stripe plus a little noise of its own, normalized (global and local
    features of one image are correlated, as those of one backbone are)."""
    n = ident.shape[0]
    loc = cl[ident]
    shift = torch.randint(-1, 2, (n,), generator=gen)
    pos = (torch.arange(H)[None, :] + shift[:, None]).clamp(0, H - 1)
    loc = loc.gather(1, pos[:, :, None].expand(n, H, C))
    loc = torch.nn.functional.normalize(loc + noise * torch.randn(n, H, C, generator=gen) / C**0.5, dim=2)
    g = loc.mean(1) @ proj.t()
    g = g + 0.5 * noise * g.norm(dim=1, keepdim=True) * torch.randn(n, D, generator=gen) / D**0.5
    return torch.nn.functional.normalize(g, dim=1), loc


def build_shard(args, size, rows, dtype, cg, cl):
    """Index of the gallery items ``rows`` (a range) of a gallery of ``size`` items."""
    from partdist.search import GalleryIndex

    idx = GalleryIndex(dtype=dtype, lam=args.lam)
    for c in range(rows.start // CHUNK, (rows.stop + CHUNK - 1) // CHUNK):
        s, e = max(rows.start, c * CHUNK), min(rows.stop, (c + 1) * CHUNK)
        if s >= e:
            continue
        gen = torch.Generator().manual_seed(args.seed * 7919 + 104729 * size + c)
        full = torch.arange(c * CHUNK, min((c + 1) * CHUNK, size))
        g, loc = views(cg, cl, full // args.views, gen, args.noise)
        off = s - c * CHUNK
        idx.add(g[off : off + e - s], loc[off : off + e - s], ids=torch.arange(s, e))
    if len(idx) == 0:
        idx.add(torch.zeros(0, D), torch.zeros(0, H, C))
    _ = idx.ids  # consolidate now (not inside the timed search)
    return idx


def queries(args, size, cg, cl):
    gen = torch.Generator().manual_seed(args.seed + 17 + size)
    ident = torch.randint(0, size // args.views, (args.queries,), generator=gen)
    return views(cg, cl, ident, gen, args.noise)


def timed(fn, device):
    """``(seconds, peak extra bytes, result, CPU seconds of this process)`` of one run."""
    box = {}

    def run():
        c0 = time.process_time()
        out = fn()
        box["cpu"] = time.process_time() - c0
        return out

    t, mem, out = time_and_peak(run, device)
    return t, mem, out, box["cpu"]


def variants(args):
    """The shortlist scores to time: ``(w, pooling)``, w = 0 the global distance alone."""
    return [(w, p) for w in args.pooled_weight for p in (args.pooling if w else ["mean"])]


def ts_name(kk, w, pooling="mean"):
    return f"two-stage K'={kk}" + ((" pooled" if pooling == "mean" else " " + pooling) + f" w={w:g}" if w else "")


def run_searches(idx, qg, ql, args, distributed, device):
    """{name: (seconds, peak bytes, result, CPU seconds)}."""
    out = {}
    kw = dict(distributed=distributed, backend=args.backend)
    if args.backend == "faiss":
        kw.update(faiss_factory=args.faiss_factory, faiss_params=args.faiss_params)
    n_ex = min(args.exact_queries, qg.shape[0])
    for j, (w, pooling) in enumerate(variants(args)):
        # one-time costs outside the timing (w > 0: the index's cache of pooled stripes; the FAISS index)
        t0 = time.perf_counter()
        idx.search(qg[:1], ql[:1], args.k, mode="two-stage", shortlist=args.shortlist[0], pooled_weight=w,
                   pooling=pooling, **kw)
        if args.backend == "faiss" and j == 0:
            print(f"  [FAISS index {args.faiss_factory!r} built (and one query searched) in "
                  f"{time.perf_counter() - t0:.1f} s]", flush=True)
        for kk in args.shortlist:
            out[ts_name(kk, w, pooling)] = timed(
                lambda: idx.search(qg, ql, args.k, mode="two-stage", shortlist=kk, pooled_weight=w, pooling=pooling,
                                   **kw), device)
    if args.backend == "torch" and not args.no_tuned:
        t0 = time.perf_counter()
        t = idx.tune(args.k, distributed=distributed)
        print(f"  [{t.summary()}; tuning took {time.perf_counter() - t0:.1f} s]", flush=True)
        out[TUNED] = timed(lambda: idx.search(qg, ql, args.k, mode="two-stage", **kw), device)
    if n_ex:
        out["exact"] = timed(lambda: idx.search(qg[:n_ex], ql[:n_ex], args.k, mode="exact", **kw), device)
    if args.rerank:
        nr = min(args.rerank_queries, qg.shape[0])
        out[f"two-stage K'={args.shortlist[0]} + re-ranking"] = timed(
            lambda: idx.search(qg[:nr], ql[:nr], args.k, mode="two-stage", shortlist=args.shortlist[0], rerank=True,
                               pooled_weight=0.0, **kw), device)
    if args.global_recall and n_ex:
        out["global only"] = timed(lambda: idx.search(qg[:n_ex], None, args.k, lam=0.0, **kw), device)
    return out


def recall(res, ref):
    """Mean fraction of the exact top-k found, over the queries both ran."""
    n = min(ref.ids.shape[0], res.ids.shape[0])
    hits = sum(len(set(res.ids[i].tolist()) & set(ref.ids[i].tolist())) for i in range(n))
    return hits / (n * ref.ids.shape[1])


def worker(rank, port, world, size, args, out_path):
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=3600))
    cg, cl = centres(size // args.views, args.seed)
    rows = range(size * rank // world, size * (rank + 1) // world)
    idx = build_shard(args, size, rows, args.dtype, cg, cl)
    qg, ql = queries(args, size, cg, cl)
    del cg, cl
    dist.barrier()
    res = run_searches(idx, qg, ql, args, True, "cpu")
    mem = torch.tensor([idx.memory_bytes()] + [int(v[1] or 0) for v in res.values()]
                       + [int(1e6 * v[3]) for v in res.values()], dtype=torch.int64)
    mems = [torch.zeros_like(mem) for _ in range(world)]
    dist.all_gather(mems, mem)
    if rank == 0:
        plain = {k: (t, (r.distances, r.ids)) for k, (t, _, r, _) in res.items()}
        torch.save({"res": plain, "mem": torch.stack(mems)}, out_path)
    dist.destroy_process_group()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(world, size, args, tmp):
    import torch.multiprocessing as mp

    out_path = os.path.join(tmp, f"world{world}_{size}.pt")
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, world, size, args, out_path)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"gloo workers failed: exit codes {[p.exitcode for p in procs]}")
    return torch.load(out_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--exact-queries", type=int, default=100, help="queries of the exact reference (a subset)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--shortlist", type=int, nargs="+", default=[100], help="K' values of the two-stage search")
    ap.add_argument("--pooling", nargs="+", default=["mean", "halves"], choices=("mean", "halves"),
                    help="stripes pooled for each --pooled-weight > 0 (GalleryIndex.search pooling=)")
    ap.add_argument("--pooled-weight", type=float, nargs="+", default=[0.0, 4.0],
                    help="shortlist scores: 0 = global distance; w > 0 = |dg|^2 + w |d pooled stripes|^2")
    ap.add_argument("--views", type=int, default=10, help="views per identity")
    ap.add_argument("--noise", type=float, default=0.7, help="noise norm relative to the identity centre")
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    add_device_arg(ap, "searches")  # --device (repeatable), --json
    ap.add_argument("--backend", default="torch", choices=("torch", "faiss"))
    ap.add_argument("--faiss-factory", default="Flat", help="FAISS index factory string (--backend faiss)")
    ap.add_argument("--faiss-params", default="", help="FAISS search parameters, e.g. nprobe=32 (--backend faiss)")
    ap.add_argument("--world", type=int, nargs="+", default=[1, 2], help="1 = one process; 2 = 2 gloo processes")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rerank", action="store_true", help="also time two-stage + re-ranking")
    ap.add_argument("--rerank-queries", type=int, default=100)
    ap.add_argument("--global-recall", action="store_true", help="also the recall of a global-only search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-tuned", action="store_true", help="leave out the default (tuned) two-stage search")
    ap.add_argument("--sources", nargs="+", choices=list(SOURCES) + ["cnn"],
                    help="instead of the tables above: the default two-stage search on each feature source "
                         "(partdist.search.sources, and 'cnn': features of --cnn-checkpoint of --cnn-data) at the "
                         "first --sizes, one process: the sources x recall x speed table")
    ap.add_argument("--cnn-data", help="a synthetic set (`partdist synthetic`): gallery = its training and "
                                       "gallery images, queries = its query images")
    ap.add_argument("--cnn-checkpoint", help="a `partdist train` checkpoint trained on --cnn-data's training set")
    args = ap.parse_args()
    if args.sources:
        return run_sources(args)
    if args.backend == "faiss" and any(args.pooled_weight):
        ap.error("--backend faiss shortlists by the global distance only: pass --pooled-weight 0")

    import tempfile

    import partdist  # noqa: F401  (fail early without the build)

    devices = resolve_devices(ap, args.device)
    torch.set_num_threads(args.threads)
    results = Results(args.json, "search")
    big = [n for n in args.sizes if n >= 1_000_000]
    gpu_targets = {}
    if big:
        for w, p in variants(args):
            name = ts_name(args.shortlist[0], w, p)
            tname = f"gallery search {big[0]:,} items ({args.dtype}), {args.queries} queries, {name}: queries/s"
            gpu_targets[(big[0], name)] = tname
            results.target(tname, 10_000, ">=", unit=" q/s", device="cuda")
    print(f"features: global D = {D}, local {H} x {C}, {args.dtype} storage, {args.views} views per identity, "
          f"noise {args.noise}; {args.queries} queries, k = {args.k}, K' = {args.shortlist}, lam = {args.lam}, "
          f"shortlist backend {args.backend}"
          + (f" ({args.faiss_factory}{', ' + args.faiss_params if args.faiss_params else ''})"
             if args.backend == "faiss" else ""))
    tmp = tempfile.mkdtemp(prefix="bench_search")
    for device in devices:
        args.device = device
        print(env_line(device), flush=True)
        rows, targets = run_device(args, device, tmp, results, gpu_targets)
        print()
        print_table(rows, ["gallery", "processes", "search", "queries", "time", "queries/s", "CPU time",
                           "queries per CPU s", "recall@10 vs exact", "index memory (per process)",
                           "peak extra memory", "= 1 process"])
        print()
        for what, ok, val in targets:
            print(f"target {what}: {'met' if ok else 'MISSED'} ({val})")
        print()
    results.finish()  # GPU targets not measured: "not measured (no cuda run)"


def source_data(kind, args, size):
    """``(gallery index, qg, ql, description)`` of one feature source."""
    from partdist.search import GalleryIndex

    idx = GalleryIndex(dtype=args.dtype, lam=args.lam)
    if kind == "cnn":
        from partdist.data import market1501
        from partdist.eval.evaluate import features_for
        from partdist.search.cli import load_checkpoint

        model, cfg = load_checkpoint(args.cnn_checkpoint)
        sp = market1501(args.cnn_data)
        gal = features_for(model, sp.train + sp.gallery, cfg.height, cfg.width)
        q = features_for(model, sp.query[: args.queries], cfg.height, cfg.width)
        idx.add(gal["global"], gal["local"])
        return idx, q["global"], q["local"], (f"{cfg.model} {cfg.backbone} CNN trained by `partdist train` "
                                                f"({cfg.epochs} epochs), images {cfg.height}x{cfg.width}")
    src = FeatureSource(kind, size // args.views, args.seed)
    for s in range(0, size, CHUNK):
        e = min(s + CHUNK, size)
        g, loc = src.views(torch.arange(s, e) // args.views, args.seed * 7919 + 104729 * size + s // CHUNK)
        idx.add(g, loc)
    gen = torch.Generator().manual_seed(args.seed + 17 + size)
    qg, ql = src.views(torch.randint(0, size // args.views, (args.queries,), generator=gen), args.seed + 3)
    return idx, qg, ql, f"{size // args.views:,} identities x {args.views} views"


def run_sources(args):
    """The sources x recall x speed table: the default two-stage search (its settings tuned on the
    gallery) against the exact search, per feature source, on the CPU."""
    import partdist  # noqa: F401

    torch.set_num_threads(args.threads)
    size = args.sizes[0]
    print(env_line("cpu"))
    print(f"default two-stage search (GalleryIndex.search(qg, ql, {args.k}, mode='two-stage')), {args.dtype} "
          f"storage, lam = {args.lam}; recall@{args.k} vs the exact search on the first {args.exact_queries} "
          f"queries; queries/s of all queries (one timed run, the tuning outside it)", flush=True)
    rows = []
    for kind in args.sources:
        if kind == "cnn" and not (args.cnn_data and args.cnn_checkpoint):
            raise SystemExit("--sources cnn needs --cnn-data and --cnn-checkpoint")
        idx, qg, ql, what = source_data(kind, args, size)
        _ = idx.ids
        t0 = time.perf_counter()
        tun = idx.tune(args.k)
        tune_s = time.perf_counter() - t0
        t, _, res, _ = timed(lambda i=idx, a=qg, b=ql: i.search(a, b, args.k, mode="two-stage"), "cpu")
        n_ex = min(args.exact_queries, qg.shape[0])
        te, _, ex, _ = timed(lambda i=idx, a=qg[:n_ex], b=ql[:n_ex]: i.search(a, b, args.k), "cpu")
        glob = idx.search(qg[:n_ex], None, args.k, lam=0.0)
        k100 = idx.search(qg[:n_ex], ql[:n_ex], args.k, mode="two-stage", shortlist=100, pooled_weight=0.0)
        h4 = idx.search(qg[:n_ex], ql[:n_ex], args.k, mode="two-stage", shortlist=100, pooled_weight=4.0,
                        pooling="halves")
        used = tun.setting() if tun.reached else f"exact (best measured: {tun.setting()})"
        rows.append([kind, f"{len(idx):,} ({what})", used, f"{tun.recall:.4f} (>= {tun.recall_lower:.4f}, "
                     f"{tun.sample} pseudo-queries, {tun.reference})", f"{tune_s:.1f} s",
                     f"{recall(res, ex):.4f}", f"{qg.shape[0] / t:,.1f}", f"{n_ex / te:,.1f}",
                     f"{recall(glob, ex):.3f} / {recall(k100, ex):.3f} / {recall(h4, ex):.3f}"])
        print("  " + " | ".join(rows[-1]), flush=True)
    print()
    print_table(rows, ["source", "gallery", "default search (tuned)", "estimated recall@10 (95% bound, sample, reference)",
                       "tuning", "recall@10 vs exact", "queries/s", "exact queries/s",
                       "global only / K'=100 global / K'=100 halves w=4"])


def run_device(args, device, tmp, results, gpu_targets):
    """Every size and process count on ``device``: the table rows and the target lines (CPU
    targets, and the GPU ones on ``cuda``); figures also go to ``results`` (``--json``)."""
    rows, targets = [], []
    worlds = args.world if device == "cpu" else [1]  # several processes: gloo on the CPU only
    if worlds != args.world:
        print(f"  [--world {' '.join(map(str, args.world))}: on {device} one process only]")
    for size in args.sizes:
        single = None
        for world in worlds:
            t0 = time.perf_counter()
            if world == 1:
                cg, cl = centres(size // args.views, args.seed)
                idx = build_shard(args, size, range(0, size), args.dtype, cg, cl).to(device)
                qg, ql = queries(args, size, cg, cl)
                del cg, cl
                build_s = time.perf_counter() - t0
                out = run_searches(idx, qg, ql, args, False, device)
                res = {k: (t, r) for k, (t, _, r, _) in out.items()}
                mems = {k: m for k, (_, m, _, _) in out.items()}
                cpus = {k: c for k, (_, _, _, c) in out.items()}
                index_mem = idx.memory_bytes()
                del idx
            else:
                got = run_world(world, size, args, tmp)
                build_s = time.perf_counter() - t0
                from partdist.search import SearchResult

                res = {k: (t, SearchResult(*r)) for k, (t, r) in got["res"].items()}
                m = got["mem"]  # [world, 1 + searches]: index bytes, then peak extra bytes
                index_mem = int(m[:, 0].max())
                mems = {k: int(m[:, 1 + j].max()) for j, k in enumerate(res)}
                cpus = {k: float(m[:, 1 + len(res) + j].sum()) / 1e6 for j, k in enumerate(res)}
            ref = res.get("exact", (None, None))[1]
            n_q = {"exact": min(args.exact_queries, args.queries), "global only": min(args.exact_queries, args.queries)}
            n_q.update({ts_name(kk, w, p): args.queries for kk in args.shortlist for w, p in variants(args)})
            n_q[TUNED] = args.queries
            n_q[f"two-stage K'={args.shortlist[0]} + re-ranking"] = min(args.rerank_queries, args.queries)
            for name, (t, r) in res.items():
                rec = "-"
                if ref is not None and name != "exact":
                    rec = f"{recall(r, ref):.4f}"
                same = "-"
                if world == 1:
                    single = single or {}
                    single[name] = r
                elif single and name in single:
                    a = single[name]
                    if torch.equal(a.ids, r.ids) and torch.equal(a.distances, r.distances):
                        same = "yes (bitwise)"
                    else:
                        diff = (a.distances.double() - r.distances.double()).abs().max().item()
                        ids_same = (a.ids == r.ids).double().mean().item()
                        same = f"ids {100 * ids_same:.2f}% equal, max |d diff| {diff:.1e}"
                qps = n_q[name] / t
                who = "1 process" if world == 1 else f"{world} gloo processes"
                rows.append([f"{size:,}", who, name, n_q[name], f"{t:.2f} s", f"{qps:,.1f}",
                             f"{cpus[name]:.1f} s", f"{n_q[name] / cpus[name]:,.1f}", f"{rec}", fmt_mem(index_mem),
                             fmt_mem(mems.get(name)), same])
                print("  " + " | ".join(str(c) for c in rows[-1]), flush=True)
                case = f"search {size:,} items ({args.dtype}), {who}, {name}"
                results.add(case, device, "queries/s", qps, unit="q/s", note=f"{n_q[name]} queries")
                if rec != "-":
                    results.add(case, device, "recall@10 vs exact", float(rec), unit="")
                if (size, name) in gpu_targets and world == 1:
                    results.measure(gpu_targets[(size, name)], qps, device)
                if (name.startswith("two-stage K'=") or name == TUNED) and "re-ranking" not in name and world == 1:
                    if ref is not None:
                        what = "the default (tuned) search" if name == TUNED else name[len("two-stage "):]
                        targets.append((f"recall@10 >= 0.99 at {what}, {size:,}", float(rec) >= 0.99, rec))
                    # the GPU target (>= 10,000 queries/s) is printed and recorded by results.measure above
                    if (size >= 1_000_000 and device == "cpu" and args.dtype == "float16"
                            and (name == TUNED
                                 or name in [ts_name(args.shortlist[0], w, p) for w, p in variants(args)])):
                        targets.append((f">= 100 queries/s at {size:,}, float16, CPU, {name}", qps >= 100,
                                        f"{qps:,.1f}"))
            print(f"  [{size:,}, {world} process(es): built in {build_s:.0f} s]", flush=True)
    return rows, targets


if __name__ == "__main__":
    main()
