"""SearchParams (one checked object), the tuning (its estimate is the recall the search gets on
the pseudo-queries, self match excluded), and the default two-stage search's recall on feature
sources of different structure (synthetic generators and a CNN's features)."""

import dataclasses
import math

import pytest
import torch
from search_data import G, build, data

from partdist.search import GalleryIndex, SearchParams
from partdist.search import tune as T
from partdist.search.sources import SOURCES, FeatureSource


def recall(res, ref, rtol=0.0):
    """Fraction of the exact top k found; with ``rtol`` an item whose distance is within ``rtol``
    of the exact k-th distance also counts (near-ties that float rounding may order either way:
    the exact and the two-stage searches compute a pair's distance in different kernels)."""
    hits = 0
    for a, da, b, db in zip(res.ids.tolist(), res.distances.tolist(), ref.ids.tolist(), ref.distances.tolist()):
        ok = [i in set(b) or d <= db[-1] * (1 + rtol) for i, d in zip(a, da)]
        hits += sum(ok)
    return hits / ref.ids.numel()


# --------------------------------------------------------------------------------------
# SearchParams
# --------------------------------------------------------------------------------------


def test_params_object_equals_keywords():
    d = data()
    idx = build(d)
    p = SearchParams(mode="two-stage", shortlist=13, pooled_weight=4.0, pooling="halves")
    a = idx.search(d["qg"], d["ql"], 5, p)
    b = idx.search(d["qg"], d["ql"], 5, mode="two-stage", shortlist=13, pooled_weight=4.0, pooling="halves")
    c = idx.search(d["qg"], d["ql"], 5, SearchParams(mode="two-stage", shortlist=40), shortlist=13,
                   pooled_weight=4.0, pooling="halves")  # keywords replace the object's fields
    for r in (b, c):
        assert torch.equal(a.ids, r.ids) and torch.equal(a.distances, r.distances)


@pytest.mark.parametrize("field, value, match", [
    ("mode", "fast", "mode must be one of"),
    ("shortlist", 0, "shortlist must be a positive int"),
    ("pooled_weight", -1.0, "pooled_weight must be a finite number >= 0"),
    ("pooling", "thirds", "pooling must be one of"),
    ("target_recall", 1.5, "target_recall must be a finite number > 0 and <= 1"),
    ("target_recall", 0, "target_recall must be a finite number > 0"),
    ("k1", 0, "k1 must be a positive int"),
    ("lambda_value", 2.0, "lambda_value must be a finite number >= 0 and <= 1"),
    ("lam", -1.0, "lam must be a finite number >= 0"),
    ("metric", "manhattan", "metric must be one of"),
    ("block_queries", 0, "block_queries must be a positive int"),
])
def test_params_checked_when_made(field, value, match):
    with pytest.raises(ValueError, match=f"SearchParams: {match}"):
        SearchParams(**{field: value})
    with pytest.raises(ValueError, match=match):  # the same check through search's keywords
        d = data()
        build(d).search(d["qg"], d["ql"], 3, **{field: value})


def test_params_bad_combinations_and_names():
    with pytest.raises(ValueError, match="rerank=True needs mode='two-stage'"):
        SearchParams(rerank=True)
    with pytest.raises(ValueError, match="needs backend='torch'"):
        SearchParams(mode="two-stage", backend="faiss", pooled_weight=1.0)
    with pytest.raises(TypeError, match="progress must be True or False"):
        SearchParams(progress="yes")
    d = data()
    with pytest.raises(TypeError, match="unexpected keyword argument 'shortlst'.*fields of SearchParams"):
        build(d).search(d["qg"], d["ql"], 3, shortlst=5)
    with pytest.raises(TypeError, match="params must be a partdist.search.SearchParams, got dict"):
        build(d).search(d["qg"], d["ql"], 3, {"mode": "exact"})
    p = SearchParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mode = "two-stage"


# --------------------------------------------------------------------------------------
# the tuning
# --------------------------------------------------------------------------------------


def _index(kind="shifted", n_ids=60, views=6, seed=0):
    src = FeatureSource(kind, n_ids, seed, D=32, H=4, C=16)
    ident = torch.arange(n_ids * views) // views
    gg, gl = src.views(ident, 1)
    idx = GalleryIndex()
    idx.add(gg, gl)
    return idx, src


def test_tuning_estimate_is_the_recall_on_the_pseudo_queries_without_themselves():
    """Re-do what the tuning estimates with the public API: the sampled gallery items searched as
    queries (exact and two-stage with the chosen setting, one more result each, the item itself
    dropped) give the recall the tuning reports, for the chosen setting and every other score."""
    idx, _ = _index()
    t = idx.tune(10, sample=40)
    st = idx._tuning_state
    assert t.sample == 40 == st["sample_ids"].numel() and st["reference"] == "exact"
    pick = st["sample_ids"]
    rows = torch.searchsorted(idx.ids, pick)
    qg, ql = idx.global_features[rows], idx.local_features[rows]

    def without_self(res, n):
        out = []
        for own, row in zip(pick.tolist(), res.ids.tolist()):
            out.append([i for i in row if i != own][:n])
        return out

    kr = T.reference_neighbours(10)
    assert kr == 9 and t.neighbours == 40 * kr
    exact = without_self(idx.search(qg, ql, 11), kr)  # the nearest others standing for a real query's top 10
    for (w, pooling), est in t.table.items():
        # a two-stage search returning its whole shortlist of K' + 1: the item itself and the K' others
        full = idx.search(qg, ql, t.shortlist + 1, mode="two-stage", shortlist=t.shortlist + 1, pooled_weight=w,
                          pooling="mean" if pooling == "-" else pooling)
        cand = [set(r) for r in without_self(full, t.shortlist)]
        rec = sum(len(set(e) & c) for e, c in zip(exact, cand)) / (kr * len(exact))
        assert abs(rec - est) < 1e-12, (w, pooling)


def test_self_match_is_excluded():
    """Every pseudo-query is in the gallery at distance 0: counted, it would be found by every
    score at position 0; the positions hold the other items only."""
    idx, _ = _index()
    idx.tune(5, sample=30)
    st = idx._tuning_state
    assert st["positions"].shape == (len(st["configs"]), 30, 5)
    t1 = T._drop_self(torch.tensor([[7, 3, 9], [4, 7, 1], [5, 6, 2]]), torch.tensor([7, 7, 8]), 2)
    assert t1.tolist() == [[3, 9], [4, 1], [5, 6]]


def test_tuning_used_saved_and_respects_fixed_settings(tmp_path):
    idx, src = _index("template")
    qg, ql = src.views(torch.arange(20), 9)
    assert idx.tuning is None
    idx.search(qg, ql, 5, mode="two-stage")  # tunes
    t = idx.tuning
    assert t is not None and 0 < t.recall <= 1 and t.recall_lower <= t.recall and t.sample == 256
    t5 = T.Tuning(idx._tuning_state, 5)
    r = idx.resolve(5, mode="two-stage")
    assert (r.shortlist, r.pooled_weight, r.pooling) == (t5.shortlist, t5.pooled_weight, t5.pooling)
    assert idx.resolve(5, mode="two-stage", shortlist=7).shortlist == 7
    assert idx.resolve(5, mode="two-stage", pooled_weight=0).pooled_weight == 0
    assert idx.resolve(5, mode="two-stage", pooling="halves", pooled_weight=2.0).pooling == "halves"
    state = idx._tuning_state
    idx.search(qg, ql, 5, mode="two-stage", shortlist=9)
    assert idx._tuning_state is state  # reused, not re-measured
    idx.save(tmp_path / "g.idx")
    back = GalleryIndex.load(tmp_path / "g.idx")
    assert torch.equal(back._tuning_state["positions"], state["positions"])
    b = back.search(qg, ql, 5, mode="two-stage")
    a = idx.search(qg, ql, 5, mode="two-stage")
    assert torch.equal(a.ids, b.ids) and back._tuning_state["seconds"] == state["seconds"]
    idx.search(qg, ql, 5, mode="two-stage", lam=0.5)  # another fused distance: measured again
    assert idx._tuning_state["lam"] == 0.5
    idx.add(qg[:1], ql[:1])  # another gallery
    assert idx.tuning is None


def test_select_cheapest_reaching_target():
    """A hand-made record: score 0 needs K' = 40 for every neighbour, score 1 finds all within 15
    but costs more per item; the choice is the cheaper at the required recall, and the best
    measured one (flagged) when the target is out of reach."""
    m, k = 400, 10
    pos = torch.stack([torch.randint(0, 40, (m, k), generator=torch.Generator().manual_seed(0)),
                       torch.randint(0, 15, (m, k), generator=torch.Generator().manual_seed(1))]).int()
    st = {"version": T.TUNING_VERSION, "k": k, "gallery_size": 10_000, "max_shortlist": 2000, "positions": pos,
          "configs": [[0.0, "none"], [4.0, "mean"]], "widths": [512, 640], "pair_cost": 1000.0}
    ch = T.select(st, k, 0.99)  # K' = 2 x 40: 1e4 * 512 + 80e3 < 1e4 * 640 + 30e3
    assert ch["reached"] and (ch["needed"], ch["shortlist"], ch["pooled_weight"]) == (40, 100, 0.0)
    st["pair_cost"] = 1e6
    ch = T.select(st, k, 0.99)
    assert ch["reached"] and (ch["needed"], ch["shortlist"], ch["pooled_weight"]) == (15, 30, 4.0)
    ch = T.select(st, k, 0.99, shortlist=10)
    assert not ch["reached"] and ch["pooled_weight"] == 4.0 and ch["shortlist"] == 10
    assert T.wilson_lower(1.0, 4000) > 0.99 > T.wilson_lower(1.0, 200)
    # the pooled stripes alone (w = inf): as good as score 1 on 256 columns, the cheapest
    st["positions"] = torch.cat([pos, pos[1:]])
    st["configs"].append([math.inf, "halves"])
    st["widths"].append(256)
    ch = T.select(st, k, 0.99)
    assert ch["reached"] and (ch["shortlist"], ch["pooled_weight"], ch["pooling"]) == (30, math.inf, "halves")


def test_tuning_measures_the_pooled_stripes_alone():
    """The default weights include math.inf: the record has the scores of the pooled stripes
    alone (mean and halves), P * C columns wide, and the report names them."""
    d = data()
    idx = build(d)
    t = idx.tune(5, sample=20)
    st = idx._tuning_state
    C = d["gl"].shape[2]
    alone = {p: wd for (w, p), wd in zip(st["configs"], st["widths"]) if w == math.inf}
    assert alone == {"mean": C, "halves": 2 * C}
    assert (math.inf, "halves") in t.table
    assert T.score_name(math.inf, "halves") == "halves pooled stripes alone"


# --------------------------------------------------------------------------------------
# recall on sources of different structure
# --------------------------------------------------------------------------------------


# one source in test-fast (the one built against a fixed proxy weight), all four in make test
@pytest.mark.parametrize("kind", [k if k == "template" else pytest.param(k, marks=pytest.mark.slow) for k in SOURCES])
def test_default_two_stage_recall_on_every_source(kind):
    """With default options (settings from the tuning), recall@10 >= 0.99 against the exact search."""
    src = FeatureSource(kind, 200, 3)
    gg, gl = src.views(torch.arange(2000) // 10, 1)
    qg, ql = src.views(torch.randint(0, 200, (100,), generator=torch.Generator().manual_seed(4)), 2)
    idx = GalleryIndex(dtype="float16")
    idx.add(gg, gl)
    ex = idx.search(qg, ql, 10)
    ts = idx.search(qg, ql, 10, mode="two-stage")
    assert recall(ts, ex) >= 0.99, idx.tuning.summary()
    # a two-stage search, not the exact fallback (10 views per identity: the pseudo-queries'
    # missing view must not make the estimate pessimistic)
    assert idx.tuning.reached and idx.resolve(10, mode="two-stage").mode == "two-stage", idx.tuning.summary()
    # the estimate of every score at a short K' (where the scores differ) is the recall of the
    # held-out queries within the binomial noise of both: neither optimistic nor pessimistic
    est = T.Tuning(idx._tuning_state, 10, shortlist=20)
    for (w, pooling), e in est.table.items():
        real = recall(idx.search(qg, ql, 10, mode="two-stage", shortlist=20, pooled_weight=w,
                                 pooling="mean" if pooling == "-" else pooling), ex)
        p = min(max((e + real) / 2, 0.002), 0.998)
        se = (p * (1 - p) / est.neighbours + p * (1 - p) / ex.ids.numel()) ** 0.5
        assert abs(e - real) <= 3.5 * se, (kind, w, pooling, e, real, se)


def test_fixed_pooled_weight_loses_recall_on_the_template_source():
    """The source built against a fixed proxy weight: the weight 4 of the pooled halves finds
    fewer of the exact neighbours than the default global shortlist at the same K'."""
    src = FeatureSource("template", 200, 3)
    gg, gl = src.views(torch.arange(2000) // 10, 1)
    qg, ql = src.views(torch.randint(0, 200, (100,), generator=torch.Generator().manual_seed(4)), 2)
    idx = GalleryIndex()
    idx.add(gg, gl)
    ex = idx.search(qg, ql, 10)
    kw = dict(mode="two-stage", shortlist=30)
    glob = recall(idx.search(qg, ql, 10, pooled_weight=0, **kw), ex)
    halves = recall(idx.search(qg, ql, 10, pooled_weight=4, pooling="halves", **kw), ex)
    assert halves < glob


@pytest.mark.slow  # end to end: writes and reads 640 images, runs the CNN on them, tunes and searches
def test_default_two_stage_recall_on_cnn_features(tmp_path):
    """Features of a compact AlignedReID CNN (random weights: the structure of a CNN's global
    and stripe pooling of one map, not a generator's) of synthetic person images."""
    from partdist.data import SyntheticReID, market1501
    from partdist.eval.evaluate import features_for
    from partdist.train import TrainConfig, build_model

    SyntheticReID(str(tmp_path / "d"), num_ids=80, num_cams=2, imgs_per_id_cam=4, height=64, width=32,
                  seed=2).generate()
    s = market1501(str(tmp_path / "d"))
    torch.manual_seed(0)
    cfg = TrainConfig(model="aligned", backbone="compact", height=64, width=32)
    model = build_model(cfg, 4).eval()
    gal = features_for(model, s.train + s.gallery, 64, 32)
    q = features_for(model, s.query, 64, 32)
    idx = GalleryIndex()
    idx.add(gal["global"], gal["local"])
    ex = idx.search(q["global"], q["local"], 10)
    ts = idx.search(q["global"], q["local"], 10, mode="two-stage")
    assert len(idx) >= 500 and recall(ts, ex, rtol=1e-4) >= 0.99, idx.tuning.summary()


def test_tuning_covers_tiny_gallery():
    d = data()
    idx = build(d)
    t = idx.tune(10)
    assert t.sample == G and t.reached and t.recall_lower <= 1


def test_unreachable_target_falls_back_to_exact():
    """No measured shortlist (here at most 12 long) reaches the target: a search leaving K' to the
    tuning is the exact one; with K' fixed it stays two-stage."""
    idx, src = _index("map-strong")
    qg, ql = src.views(torch.arange(15), 9)
    t = idx.tune(10, max_shortlist=12, target_recall=0.9999)
    assert not t.reached and "NOT reached" in t.summary()
    p = SearchParams(mode="two-stage", target_recall=0.9999)
    assert idx.resolve(10, p).mode == "exact"
    ex, ts = idx.search(qg, ql, 10), idx.search(qg, ql, 10, p)
    assert torch.equal(ex.ids, ts.ids) and torch.equal(ex.distances, ts.distances)
    assert idx.resolve(10, p, shortlist=12).mode == "two-stage"
