"""The one distance description (partdist.eval.Distance) and the re-ranking's distance
sources (partdist.eval.DistanceSource)."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import partdist
from partdist.eval import (
    Distance,
    DistanceSource,
    distance_blocks,
    global_distance,
    query_gallery_distance,
    re_ranking,
    re_ranking_features,
    topk_distance,
)
from partdist.eval.reranking import DenseSource, rerank_source


def feats(seed=0, q=9, g=17, h=5, c=8, d=12):
    gen = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).float()  # noqa: E731
    return mk(q, h, c), mk(g, h, c), mk(q, d), mk(g, d)


def by_hand(kind, ql, gl, qg, gg, metric="euclidean", lam=1.0, **local_opts):
    """The distance from its definition, written out: cdist / 1 - cos, local_dist, the sum."""
    if metric == "cosine":
        glob = 1 - F.normalize(qg, dim=1) @ F.normalize(gg, dim=1).t()
    else:
        glob = torch.cdist(qg.double(), gg.double()).float()
        if metric == "sqeuclidean":
            glob = glob**2
    loc = partdist.local_dist(ql, gl, **local_opts)
    return {"global": glob, "local": loc, "fused": glob + lam * loc}[kind]


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_global_distance_paired_is_the_diagonal_of_all_pairs(metric):
    _, _, qg, _ = feats()
    other = torch.randn_like(qg)
    full = global_distance(qg, other, metric)
    paired = global_distance(qg, other, metric, paired=True)
    torch.testing.assert_close(paired, full.diagonal(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"qf \[N, D\] and gf \[N, D\]"):
        global_distance(qg, other[:-1], metric, paired=True)


@pytest.mark.parametrize("kind", ["global", "local", "fused"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_every_code_path_computes_the_described_distance(kind, metric):
    ql, gl, qg, gg = feats(1)
    dist = Distance(kind, metric=metric, lam=0.6, gamma=0.2, band=3.0)
    ref = by_hand(kind, ql, gl, qg, gg, metric, lam=0.6, gamma=0.2, band=3.0)
    # all four features given: the kind picks what it uses
    dense = query_gallery_distance(ql, gl, qg, gg, distance=dist, block_rows=4)
    torch.testing.assert_close(dense, ref, rtol=1e-4, atol=1e-5)
    blocks = torch.cat([b for _, _, b in distance_blocks(ql, gl, qg, gg, distance=dist, block_rows=2)])
    torch.testing.assert_close(blocks, ref, rtol=1e-4, atol=1e-5)
    vals, idx = topk_distance(ql, gl, qg, gg, k=5, distance=dist, block_rows=3)
    torch.testing.assert_close(vals, ref.gather(1, idx), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vals, ref.sort(dim=1).values[:, :5], rtol=1e-4, atol=1e-5)
    # the same as the separate options with only the kind's features
    legacy_feats = {
        "global": (None, None, qg, gg),
        "local": (ql, gl, None, None),
        "fused": (ql, gl, qg, gg),
    }[kind]
    legacy = query_gallery_distance(*legacy_feats, lam=0.6, metric=metric, gamma=0.2, band=3.0, block_rows=4)
    assert torch.equal(legacy, dense)
    # re-ranking from features: the dense re-ranking of the described distance
    q_all = torch.cat([ql, gl]), torch.cat([qg, gg])
    full = by_hand(kind, q_all[0], q_all[0], q_all[1], q_all[1], metric, lam=0.6, gamma=0.2, band=3.0)
    nq = ql.shape[0]
    want = re_ranking(full[:nq, nq:], full[:nq, :nq], full[nq:, nq:], k1=6, k2=3)
    got = re_ranking_features(ql, gl, qg, gg, k1=6, k2=3, distance=dist, chunk_size=7)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(re_ranking_features(*legacy_feats, k1=6, k2=3, lam=0.6, metric=metric, gamma=0.2, band=3.0,
                                           chunk_size=7), got)


def test_distance_is_a_frozen_value():
    d = Distance("local", gamma=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.lam = 2.0
    assert d == Distance(kind="local", gamma=0.5) and hash(d) == hash(Distance("local", gamma=0.5))
    assert Distance().kind == "fused" and d.uses_local and not d.uses_global


def test_bad_descriptions_and_conflicts():
    ql, gl, qg, gg = feats()
    with pytest.raises(ValueError, match="kind must be one of"):
        Distance("both")
    with pytest.raises(ValueError, match="metric must be one of"):
        Distance(metric="manhattan")
    with pytest.raises(TypeError, match="lam must be a finite real"):
        Distance(lam=float("nan"))
    with pytest.raises(ValueError, match="not both .*lam.*put lam= into the Distance"):
        query_gallery_distance(ql, gl, qg, gg, distance=Distance(), lam=0.5)
    with pytest.raises(ValueError, match="not both .*metric"):
        distance_blocks(ql, gl, qg, gg, distance=Distance(), metric="cosine")
    with pytest.raises(ValueError, match="not both .*gamma"):
        re_ranking_features(ql, gl, qg, gg, distance=Distance(), gamma=0.1)
    with pytest.raises(TypeError, match="distance must be a partdist.eval.Distance"):
        topk_distance(ql, gl, k=2, distance={"kind": "local"})
    with pytest.raises(ValueError, match=r"'fused' distance needs global features \(q_global, g_global\)"):
        query_gallery_distance(ql, gl, distance=Distance("fused"))
    with pytest.raises(ValueError, match=r"'local' distance needs local features"):
        topk_distance(q_global=qg, g_global=gg, k=2, distance=Distance("local"))
    with pytest.raises(TypeError, match="unexpected keyword argument 'lamda'"):
        query_gallery_distance(ql, gl, lamda=0.5)


@pytest.mark.parametrize("name,value", [("lam", 1.0), ("metric", "euclidean"), ("normalize", True),
                                        ("gamma", 0.0), ("band", None)])
def test_an_option_given_beside_distance_is_a_conflict_even_at_its_default(name, value):
    """Whether an option was given is known from the call, not guessed by comparing it with
    its default: the default value given explicitly next to ``distance`` is still named."""
    ql, gl, qg, gg = feats()
    for call in (
        lambda **kw: query_gallery_distance(ql, gl, qg, gg, **kw),
        lambda **kw: list(distance_blocks(ql, gl, qg, gg, **kw)),
        lambda **kw: topk_distance(ql, gl, qg, gg, k=2, **kw),
        lambda **kw: re_ranking_features(ql, gl, qg, gg, k1=4, k2=2, **kw),
    ):
        with pytest.raises(ValueError, match=f"not both \\(got distance and {name}\\); put {name}= into"):
            call(distance=Distance(), **{name: value})


def test_options_left_out_take_the_distance_defaults():
    ql, gl, qg, gg = feats()
    want = query_gallery_distance(ql, gl, qg, gg, distance=Distance())
    assert torch.equal(query_gallery_distance(ql, gl, qg, gg), want)
    assert torch.equal(torch.cat([b for _, _, b in distance_blocks(ql, gl, qg, gg, block_rows=4)]), want)
    # each option alone is applied, the others keep the Distance defaults
    for name, value in (("lam", 0.3), ("metric", "cosine"), ("normalize", False), ("gamma", 0.2), ("band", 2.0)):
        want = query_gallery_distance(ql, gl, qg, gg, distance=Distance(**{name: value}))
        got = torch.cat([b for _, _, b in distance_blocks(ql, gl, qg, gg, block_rows=4, **{name: value})])
        assert torch.equal(got, want), name
        assert torch.equal(query_gallery_distance(ql, gl, qg, gg, **{name: value}), want), name
    # with one kind of features the kind follows from them
    assert torch.equal(query_gallery_distance(ql, gl), query_gallery_distance(ql, gl, distance=Distance("local")))


def test_a_global_distance_ignores_local_features_of_another_stripe_count():
    ql, gl, qg, gg = feats()
    got = re_ranking_features(ql, gl[:, :3], qg, gg, k1=5, k2=2, distance=Distance("global"))
    assert torch.equal(got, re_ranking_features(q_global=qg, g_global=gg, k1=5, k2=2))
    with pytest.raises(ValueError, match="same number of stripes"):
        re_ranking_features(ql, gl[:, :3], qg, gg, k1=5, k2=2)


class _Symmetric:
    """A distance source written from the protocol alone: one symmetric [N, N] matrix."""

    def __init__(self, full, q):
        self.full, self.q = full, q
        self.n = full.shape[0]
        self.g = self.n - q

    def columns(self, start, stop):
        return (self.full[start:stop].astype(np.float64) ** 2).astype(np.float32)

    def gather(self, j, i):
        return (self.full[j, i].astype(np.float64) ** 2).astype(np.float32)

    def qg_sq(self, start, stop):
        return (self.full[start:stop, self.q :].astype(np.float64) ** 2).astype(np.float32)


def test_rerank_source_takes_any_distance_source():
    ql, gl, _, _ = feats(2)
    x = torch.cat([ql, gl])
    full = partdist.local_dist(x, x).numpy()
    full = (full + full.T) / 2
    nq = ql.shape[0]
    src = _Symmetric(full, nq)
    assert isinstance(src, DistanceSource)
    dense = DenseSource(full[:nq, nq:], full[:nq, :nq], full[nq:, nq:])
    assert isinstance(dense, DistanceSource)
    want = re_ranking(full[:nq, nq:], full[:nq, :nq], full[nq:, nq:], k1=6, k2=3)
    np.testing.assert_array_equal(rerank_source(src, k1=6, k2=3), want)
    np.testing.assert_array_equal(rerank_source(dense, k1=6, k2=3, chunk_size=4), want)
    with pytest.raises(ValueError, match="k1 must be an int >= 1"):
        rerank_source(src, k1=0)
