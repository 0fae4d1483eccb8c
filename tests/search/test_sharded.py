"""Sharded search over gloo (2 and 3 CPU processes) = one process holding the whole gallery.

Shards are unequal, one is empty (3 ranks), ids are interleaved between ranks (3 ranks), and
the gallery has exact duplicates on different ranks (ties, broken by the smaller global id).
One spawn of 3 processes serves both cases: the 3-rank world, and a 2-rank group of ranks 1
and 2. Rank 0 also runs the single-process search on the whole gallery.
"""

import os
import sys

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the spawn helper
from gloo_ranks import run_gloo  # noqa: E402
from search_data import G, build, data  # noqa: E402

pytestmark = pytest.mark.slow  # multi-process

TIMEOUT_S = 120
EVEN = list(range(0, G, 2))
SHARDS = {
    2: [list(range(0, 37)), list(range(37, G))],
    3: [[], EVEN, [i for i in range(G) if i not in EVEN]],
}
SEARCHES = {
    "exact": dict(k=12),
    "exact_full": dict(k=G),
    "exact_global": dict(k=9, lam=0.0),
    "two_stage": dict(k=6, mode="two-stage", shortlist=13),
    "two_stage_cover": dict(k=6, mode="two-stage", shortlist=G),
    "two_stage_f16": dict(k=6, mode="two-stage", shortlist=13),
    "rerank": dict(k=5, mode="two-stage", shortlist=15, rerank=True, k1=6, k2=3),
}


def run_all(index_for, d, distributed, group=None):
    from partdist.search import rank_metrics

    out = {}
    for name, kw in SEARCHES.items():
        idx = index_for("float16" if name.endswith("f16") else "float32")
        kw = dict(kw)
        k = kw.pop("k")
        ql = None if kw.get("lam") == 0.0 else d["ql"]
        res = idx.search(d["qg"], ql, k, distributed=distributed, group=group, chunk_rows=5, **kw)
        out[name] = (res.distances, res.ids)
    idx = index_for("float32")
    gids, gp, gc = idx.all_labels(distributed=distributed, group=group)
    res = idx.search(d["qg"], d["ql"], G, distributed=distributed, group=group)
    cmc, mAP = rank_metrics(res, d["qpids"], d["qcams"], gids, gp, gc, max_rank=10)
    out["metrics"] = (torch.as_tensor(cmc), torch.tensor(mAP, dtype=torch.float64))
    out["labels"] = (gids, gp, gc)
    return out


def worker(rank):
    pair = dist.new_group([1, 2])  # every rank takes part in creating it
    d = data()
    res = {3: run_all(lambda dt: build(d, rows=SHARDS[3][rank], dtype=dt), d, True)}
    from partdist.search import GalleryIndex

    fresh = GalleryIndex() if rank == 0 else build(d, rows=SHARDS[3][rank])
    try:
        fresh.search(d["qg"], d["ql"], 3, distributed=True)
        res["fresh_error"] = ""
    except ValueError as e:  # every rank must raise, none may hang
        res["fresh_error"] = str(e)
    if rank > 0:
        res[2] = run_all(lambda dt: build(d, rows=SHARDS[2][rank - 1], dtype=dt), d, True, group=pair)
    else:
        res["single"] = run_all(lambda dt: build(d, dtype=dt), d, False)
    return res


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("search"))
    return run_gloo(worker, (), out_dir, world=3, timeout=TIMEOUT_S, what="search workers")


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(SEARCHES) + ["metrics", "labels"])
def test_sharded_equals_single_process(results, world, name):
    single = results[0]["single"][name]
    ranks = range(3) if world == 3 else (1, 2)
    for rank in ranks:
        for a, b in zip(results[rank][world][name], single):
            assert a.shape == b.shape and torch.equal(a, b), (rank, name)


def test_ties_cross_shards(results):
    d_ids = results[0]["single"]["exact_full"][1]
    dists = results[0]["single"]["exact_full"][0]
    same = dists[:, 1:] == dists[:, :-1]
    assert same.any()  # duplicates 3/40, 10/11/50, 0/59 tie for every query
    assert bool((d_ids[:, 1:][same] > d_ids[:, :-1][same]).all())


def test_empty_shard_without_feature_sizes_is_explained_on_every_rank(results):
    for res in results:
        assert "rank(s) [0] is empty and was never given features" in res["fresh_error"]
