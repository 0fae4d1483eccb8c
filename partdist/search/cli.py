"""``partdist index`` and ``partdist search``: build a gallery index from a folder of images
with a trained checkpoint, and search it. Both run in one process or under ``torchrun``
(each rank extracts and holds a shard; the answers are those of one process).

``partdist/cli.py`` hooks them in with :func:`register`.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
import sys

import torch

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class UsageError(Exception):
    """A user's mistake: printed as ``partdist <cmd>: message`` with exit status 2."""


# --------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------


def _progress(args):
    return not args.no_progress and sys.stderr.isatty()


def _start_distributed(device):
    """``(rank, world, device, started)``: the process group from torchrun's environment."""
    from .. import distributed as pdist

    if pdist.launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        started = not pdist.is_distributed()
        rank, world, dev = pdist.init_distributed(device)
        return rank, world, dev, started
    return 0, 1, torch.device(device), False


def _list_images(folder, flag):
    """``(items, labeled)``: ``(path, pid, camid)`` of the images of ``folder``, sorted by path.
    Names ``{pid}_c{cam}...`` give labels (Market-1501 style); otherwise pid = camid = -1."""
    from ..data import parse_image_folder

    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {folder!r}: no such folder")
    try:
        return parse_image_folder(folder, extensions=_IMAGE_EXTS), True
    except ValueError as e:
        if "holds no image" in str(e):
            raise UsageError(f"{flag} {folder!r}: the folder holds no image ({', '.join(_IMAGE_EXTS)})") from None
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(_IMAGE_EXTS))
    return [(os.path.join(os.path.abspath(folder), n), -1, -1) for n in names], False


def load_checkpoint(path, device="cpu"):
    """``(model, config)`` of a ``partdist train`` checkpoint (:func:`partdist.runs.load_model`)."""
    from ..runs import CheckpointError, load_model

    try:
        model, cfg, _ = load_model(path, device)
    except CheckpointError as e:
        raise UsageError(f"--checkpoint {e}") from None
    return model, cfg


def _features(model, cfg, items, device, args):
    from ..eval.evaluate import features_for

    if not items:
        return None
    return features_for(model, items, cfg.height, cfg.width, device, batch_size=args.batch_size, flip=args.flip,
                        progress=_progress(args))


def _part_paths(out, world):
    return [out] if world == 1 else [f"{out}.part{r}-of-{world}" for r in range(world)]


def index_files(path):
    """The files of an index written by ``partdist index``: ``path`` itself, or its
    ``path.part<r>-of-<W>`` shards."""
    if os.path.isfile(path):
        return [path]
    parts = sorted(glob.glob(glob.escape(path) + ".part*-of-*"),
                   key=lambda p: int(p.rsplit(".part", 1)[1].split("-of-")[0]))
    if not parts:
        raise UsageError(f"--index {path!r}: no such index file (nor its {path}.part<r>-of-<W> shards); build it "
                         "with `partdist index`")
    return parts


def _load_share(files, rank, world, device):
    """This rank's part of the index stored in ``files``."""
    from .index import GalleryIndex

    try:
        if len(files) == 1:
            return GalleryIndex.load(files[0], device=device, shard=(rank, world))
        mine = files[rank::world]
        if not mine:  # more ranks than files: an empty shard with the files' layout
            return GalleryIndex.load(files[0], device=device, shard=(0, 1 << 30))
        parts = [GalleryIndex.load(f, device=device) for f in mine]
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"--index: {e}") from None
    idx = parts[0]
    tuning = idx._tuning_state  # every part file holds the tuning of the whole gallery
    for p in parts[1:]:
        if p.dim != idx.dim or (p.stripes, p.channels) != (idx.stripes, idx.channels) or p.dtype != idx.dtype:
            raise UsageError(f"--index: the shards {mine} hold features of different sizes or dtypes")
        if len(p):
            idx.add(p.global_features, p.local_features, ids=p.ids, pids=p.pids, camids=p.camids, paths=p.paths)
    idx._tuning_state = tuning
    return idx


def _agree(world, error):
    """Under torchrun: every rank learns whether any rank failed (so that none is left waiting in
    a collective); raises ``error`` here, or a pointer to the failing rank's message."""
    if world > 1:
        from ._merge import comm_device

        flag = torch.tensor([0 if error else 1], device=comm_device())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        if not int(flag.item()) and not error:
            error = UsageError("another rank failed (see its message above)")
    if error:
        raise error


def _check_new(path, flag, overwrite):
    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{flag} {path!r} exists; pass --overwrite to replace it, or choose another path")


def _run(fn, args):
    try:
        return fn(args) or 0
    except UsageError as e:
        print(f"partdist {args.cmd}: error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if getattr(args, "_started_dist", False) and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------
# partdist index
# --------------------------------------------------------------------------------------


def _shared_flags(p, images, out, fn):
    """The flags ``index`` and ``search`` share (feature extraction of ``images``, and the
    ``out`` files that ``--overwrite`` replaces); the command runs ``fn(args)``."""
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=64, help=f"{images} per feature-extraction batch")
    p.add_argument("--flip", action="store_true", help=f"average the features of {images} with the mirrored image")
    p.add_argument("--overwrite", action="store_true", help=f"replace {out}")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=functools.partial(_run, fn))
    return p


def add_index_parser(subparsers):
    p = subparsers.add_parser(
        "index", help="features of a folder of images -> a gallery index file (torchrun: one shard per rank)",
        description="Extract the global and stripe features of every image of --images with --checkpoint and "
                    "write a gallery index (partdist.search.GalleryIndex). Under torchrun with W > 1 ranks, rank r "
                    "handles a contiguous share of the images and writes OUT.part<r>-of-<W>.")
    p.add_argument("--images", required=True, help="folder of gallery images (names {pid}_c{cam}... give labels)")
    p.add_argument("--checkpoint", required=True, help="a `partdist train` checkpoint")
    p.add_argument("--out", required=True, help="index file to write")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="feature storage")
    p.add_argument("--lam", type=float, default=1.0, help="default weight of the local distance (saved)")
    p.add_argument("--metric", default="euclidean", choices=("euclidean", "sqeuclidean", "cosine"),
                   help="global-feature distance (saved in the index)")
    p.add_argument("--no-tune", action="store_true",
                   help="do not tune the two-stage search on the gallery (it then tunes at the first search, "
                        "without saving it)")
    p.add_argument("--tune-k", type=int, default=10, help="the largest k the saved tuning serves")
    return _shared_flags(p, "gallery images", "existing index files", _index)


def _index(args):
    from .index import GalleryIndex

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.tune_k < 1:
        raise UsageError(f"--tune-k must be >= 1, got {args.tune_k}")
    items, labeled = _list_images(args.images, "--images")
    rank, world, dev, args._started_dist = _start_distributed(args.device)
    outs = _part_paths(args.out, world)
    error = None
    try:
        for o in outs:
            _check_new(o, "--out", args.overwrite)
        model, cfg = load_checkpoint(args.checkpoint, dev)
    except UsageError as e:
        error = e
    _agree(world, error)
    s, e = len(items) * rank // world, len(items) * (rank + 1) // world
    mine = items[s:e]
    f = _features(model, cfg, mine, dev, args)
    idx = GalleryIndex(dtype=args.dtype, device="cpu", lam=args.lam, metric=args.metric,
                       meta={"checkpoint": os.path.abspath(args.checkpoint), "images": os.path.abspath(args.images),
                             "height": cfg.height, "width": cfg.width, "model": cfg.model, "flip": bool(args.flip),
                             "shard": f"{rank}/{world}", "gallery_size": len(items)})
    if f is not None:
        idx.add(f["global"], f["local"], ids=torch.arange(s, e), pids=f["pids"] if labeled else None,
                camids=f["camids"] if labeled else None, paths=[p for p, _, _ in mine])
    else:  # an empty shard still records the feature sizes
        probe = _features(model, cfg, items[:1], dev, args)
        idx.add(probe["global"][:0], None if probe["local"] is None else probe["local"][:0])
    tuning = None
    if not args.no_tune and idx.has_local and args.lam > 0 and len(items) >= 2:
        tuning = idx.tune(args.tune_k, distributed=world > 1, progress=_progress(args))
    idx.save(outs[rank], overwrite=args.overwrite)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        loc = "none" if idx.local_features is None else f"{idx.stripes} x {idx.channels}"
        print(f"indexed {len(items)} images ({'labeled' if labeled else 'unlabeled'}): global D = {idx.dim}, "
              f"stripes {loc}, {args.dtype}; wrote {', '.join(outs)}")
        if tuning is not None:
            print(f"{tuning.summary()} ({tuning.seconds:.1f} s; saved in the index)")
    return 0


# --------------------------------------------------------------------------------------
# partdist search
# --------------------------------------------------------------------------------------


def add_search_parser(subparsers):
    p = subparsers.add_parser(
        "search", help="search a gallery index with query images (torchrun: the index is sharded over the ranks)",
        description="The k nearest gallery items of every query by global + lam * local (exact, or two-stage: a "
                    "global shortlist re-scored by the local DMLI distance, optionally re-ranked). Under torchrun "
                    "each rank holds a share of the index; the results equal a single process's.")
    p.add_argument("--index", required=True, help="index file written by `partdist index` (or its .part shards)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--queries", help="folder of query images (needs --checkpoint)")
    q.add_argument("--query-index", help="an index file whose items are the queries (features already extracted)")
    p.add_argument("--checkpoint", help="the checkpoint the index was built with (default: the one it records)")
    p.add_argument("--k", type=int, default=10, help="results per query")
    p.add_argument("--mode", choices=("exact", "two-stage"), default="two-stage",
                   help="exact: the fused distance to every gallery item; two-stage: global shortlist, then DMLI")
    p.add_argument("--shortlist", type=int, default=None,
                   help="K': shortlist candidates per query (two-stage; default: tuned on the gallery)")
    p.add_argument("--pooled-weight", type=float, default=None,
                   help="w >= 0: shortlist by |dg|^2 + w |d pooled stripes|^2, 0: global distance only, "
                        "inf: pooled stripes only (default: tuned on the gallery)")
    p.add_argument("--pooling", choices=("mean", "halves"), default=None,
                   help="stripes pooled for --pooled-weight: mean (all) or halves (two overlapping windows) "
                        "(default: tuned on the gallery)")
    p.add_argument("--target-recall", type=float, default=0.99,
                   help="recall@k vs the exact search that the tuned settings must reach (two-stage)")
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking within the shortlist")
    p.add_argument("--backend", choices=("torch", "faiss"), default="torch", help="shortlist search")
    p.add_argument("--faiss-factory", default="Flat", help="FAISS index factory string (backend faiss)")
    p.add_argument("--faiss-params", default="",
                   help="FAISS search parameters, e.g. nprobe=32 (IVF) or efSearch=128 (HNSW) (backend faiss)")
    p.add_argument("--lam", type=float, default=None, help="weight of the local distance (default: the index's)")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--evaluate", action="store_true",
                   help="CMC / mAP of the results (labeled queries and gallery; --k = gallery size for full mAP)")
    return _shared_flags(p, "query images", "an existing --out file", _search)


def _gather_rows(t, world):
    if world == 1:
        return t
    from ..distributed import all_gather_with_grad

    return all_gather_with_grad(t)


def _search(args):
    from .index import GalleryIndex, rank_metrics
    from .params import SearchParams

    for flag, v in (("--k", args.k), ("--shortlist", args.shortlist), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be >= 1, got {v}")
    if args.out:
        _check_new(args.out, "--out", args.overwrite)
    files = index_files(args.index)
    rank, world, dev, args._started_dist = _start_distributed(args.device)
    error = idx = None
    try:
        idx = _load_share(files, rank, world, dev)
    except UsageError as e:
        error = e
    _agree(world, error)
    if args.query_index:
        try:
            qi = GalleryIndex.load(args.query_index)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(f"--query-index: {e}") from None
        qg, ql = qi.global_features, qi.local_features
        q_pids, q_cams, q_paths = qi.pids, qi.camids, qi.paths or [str(i) for i in qi.ids.tolist()]
    else:
        ckpt = args.checkpoint or idx.meta.get("checkpoint")
        if not ckpt:
            raise UsageError("--queries needs --checkpoint (the index records none)")
        items, labeled = _list_images(args.queries, "--queries")
        model, cfg = load_checkpoint(ckpt, dev)
        s, e = len(items) * rank // world, len(items) * (rank + 1) // world
        f = _features(model, cfg, items[s:e], dev, args)
        if f is None:
            probe = _features(model, cfg, items[:1], dev, args)
            f = {k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in probe.items()}
        qg = _gather_rows(f["global"], world)
        ql = None if f["local"] is None else _gather_rows(f["local"], world)
        q_pids = _gather_rows(f["pids"], world) if labeled else None
        q_cams = _gather_rows(f["camids"], world) if labeled else None
        q_paths = [p for p, _, _ in items]
    lam = idx.lam if args.lam is None else args.lam
    if idx.has_local and ql is None and lam > 0 and qg.shape[1] == idx.dim:
        raise UsageError(f"the queries have no local (stripe) features but the index has and the local weight is "
                         f"{lam} > 0: pass --lam 0 for a global-only search, or queries from the index's model")
    try:
        params = SearchParams(mode=args.mode, shortlist=args.shortlist, rerank=args.rerank,
                              pooled_weight=args.pooled_weight, pooling=args.pooling, target_recall=args.target_recall,
                              backend=args.backend, faiss_factory=args.faiss_factory, faiss_params=args.faiss_params,
                              lam=args.lam, progress=_progress(args))
        tuned_before = idx._tuning_state
        res = idx.search(qg, ql, args.k, params, distributed=world > 1)
        used = _used_settings(idx, args.k, params, tuned_before)
    except ValueError as e:
        raise UsageError(_flag_message(str(e))) from None
    except ImportError as e:
        raise UsageError(f"--backend faiss: {e}") from None
    paths = _result_paths(idx, res.ids, world)
    metrics = None
    if args.evaluate:
        gids, gp, gc = idx.all_labels(distributed=world > 1)
        if gp is None or q_pids is None or bool((torch.as_tensor(q_pids) < 0).all()):
            raise UsageError("--evaluate needs labeled queries and gallery (image names {pid}_c{cam}...)")
        try:
            cmc, mAP = rank_metrics(res, q_pids, q_cams, gids, gp, gc, max_rank=min(args.k, 20))
        except ValueError as e:
            raise UsageError(f"--evaluate: {e}") from None
        metrics = {"rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]), "mAP": float(mAP)}
    if rank == 0:
        out = {"index": args.index, "mode": args.mode, "k": args.k, "results": []}
        if used:
            out["settings"] = used
        if metrics:
            out["metrics"] = metrics
        for i in range(res.ids.shape[0]):
            out["results"].append({"query": q_paths[i], "ids": res.ids[i].tolist(),
                                   "distances": [round(float(d), 6) for d in res.distances[i]],
                                   "paths": [paths.get(int(j)) for j in res.ids[i]]})
        if args.out:
            tmp = args.out + f".tmp{os.getpid()}"
            with open(tmp, "w") as fh:
                json.dump(out, fh, indent=1)
            os.replace(tmp, args.out)
        n_show = min(3, len(out["results"]))
        for r in out["results"][:n_show]:
            top = ", ".join(f"{os.path.basename(p or str(j))} ({d:.3f})"
                            for p, j, d in zip(r["paths"][:3], r["ids"][:3], r["distances"][:3]))
            print(f"{os.path.basename(str(r['query']))}: {top}")
        if metrics:
            print(f"rank-1 {100 * metrics['rank1']:.1f}  rank-5 {100 * metrics['rank5']:.1f}  "
                  f"mAP {100 * metrics['mAP']:.1f}  (over the top {args.k})")
        if used and used.get("tuning"):
            print(used["tuning"])
        print(f"searched {len(out['results'])} queries ({args.mode}, k = {args.k}"
              + (f", {used['setting']}" if used else "") + ")"
              + (f"; wrote {args.out}" if args.out else ""))
    return 0


# the SearchParams fields the search command sets from a flag of the same name
_PARAM_FLAGS = ("mode", "shortlist", "rerank", "pooled_weight", "pooling", "target_recall", "backend",
                "faiss_factory", "faiss_params", "lam")


def _flag_message(msg: str) -> str:
    """A SearchParams error ("SearchParams: pooled_weight must ...") as the command's flag names it."""
    m = re.match(r"SearchParams: (\w+)(.*)", msg, re.S)
    if m and m.group(1) in _PARAM_FLAGS:
        return f"--{m.group(1).replace('_', '-')}{m.group(2)}".replace("math.inf", "inf")
    return msg


def _used_settings(idx, k, params, tuned_before):
    """The two-stage settings the search used (``None`` for an exact search): ``{"shortlist",
    "pooled_weight", "pooling", "setting"}``, with ``"tuning"`` (its one-line report) when the
    tuning chose some; ``"tuned_now"`` when this search ran the tuning."""
    if params.mode != "two-stage":
        return None
    from .tune import Tuning, score_name

    r = idx.resolve(k, params)
    if r.mode == "exact":
        used = {"shortlist": None, "pooled_weight": None, "pooling": None,
                "setting": "exact: no measured shortlist reaches the target recall"}
    else:
        score = score_name(r.pooled_weight, r.pooling)
        # JSON has no infinity: the pooled stripes alone are written "inf"
        w = "inf" if r.pooled_weight == float("inf") else r.pooled_weight
        used = {"shortlist": r.shortlist, "pooled_weight": w, "pooling": r.pooling,
                "setting": f"K'={r.shortlist}, {score}"}
    if params.needs_tuning and idx.has_local and r.lam > 0:
        fixed = dict(shortlist=params.shortlist, pooling=params.pooling,
                     pooled_weight=0.0 if params.backend == "faiss" else params.pooled_weight)
        t = Tuning(idx._tuning_state, k, params.target_recall, **fixed)
        used["tuning"] = t.summary() + ("" if idx._tuning_state is tuned_before else
                                         f" [tuned for this search in {t.seconds:.1f} s; not saved in the index file]")
        used.update(recall_estimate=t.recall, recall_lower_bound=t.recall_lower, tuning_sample=t.sample)
    return used


def _result_paths(idx, ids, world):
    """``{id: path}`` for the result ids (each rank knows its own shard's paths)."""
    mine = {}
    if idx.paths is not None and len(idx):
        want = torch.unique(ids.cpu())
        own_ids = idx.ids
        pos = torch.searchsorted(own_ids, want).clamp(max=len(idx) - 1)
        hit = own_ids[pos] == want
        mine = {int(i): idx.paths[int(p)] for i, p, h in zip(want, pos, hit) if h}
    if world == 1:
        return mine
    parts = [None] * world
    torch.distributed.all_gather_object(parts, mine)
    out = {}
    for p in parts:
        out.update(p)
    return out


def register(subparsers):
    """Add ``index`` and ``search`` to the ``partdist`` command's subparsers."""
    add_index_parser(subparsers)
    add_search_parser(subparsers)
