"""GalleryIndex: exact and two-stage search, ties, storage dtypes, save/load, bad input."""

import os

import pytest
import torch
from search_data import DUPLICATES, G, Q, build, data

import partdist
import partdist.eval
from partdist.search import FORMAT_VERSION, GalleryIndex, rank_metrics


def reference_topk(d, k, lam=0.7, cast=None):
    """The evaluation code's streaming top-k of global + lam * local over the whole gallery."""
    f = {n: (t if cast is None else t.to(cast)) for n, t in d.items() if n in ("qg", "ql", "gg", "gl")}
    return partdist.eval.topk_distance(f["ql"], f["gl"], f["qg"], f["gg"], k=k, lam=lam)


@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exact_equals_streaming_topk(dtype, chunk_rows):
    d = data(getattr(torch, dtype))
    v_ref, i_ref = reference_topk(d, 15)
    res = build(d, dtype=dtype).search(d["qg"], d["ql"], 15, chunk_rows=chunk_rows)
    assert torch.equal(res.ids, i_ref)  # ids = rows here
    assert torch.equal(res.distances, v_ref)


def test_ties_broken_by_id_whatever_the_insertion_order():
    d = data()
    perm = torch.randperm(G, generator=torch.Generator().manual_seed(1))
    idx = build(d, rows=perm)  # rows added shuffled, ids = row numbers
    res = idx.search(d["qg"], d["ql"], G)
    for dst, src in DUPLICATES.items():
        for q in range(Q):
            row = res.ids[q].tolist()
            a, b = row.index(src), row.index(dst)
            assert res.distances[q, a] == res.distances[q, b]
    # equal distances always come in increasing id order
    same = res.distances[:, 1:] == res.distances[:, :-1]
    assert same.any()
    assert bool((res.ids[:, 1:][same] > res.ids[:, :-1][same]).all())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_two_stage_equals_exact_when_shortlist_covers_gallery(dtype):
    d = data(getattr(torch, dtype))
    idx = build(d, dtype=dtype)
    ex = idx.search(d["qg"], d["ql"], 20, mode="exact")
    for shortlist in (G, 10 * G):
        ts = idx.search(d["qg"], d["ql"], 20, mode="two-stage", shortlist=shortlist, chunk_rows=16)
        assert torch.equal(ts.ids, ex.ids)
        # exact: partdist.local_dist's all-pairs kernel (hardware square root / division estimates
        # refined by a Newton step); two-stage: batch_local_dist on the gathered pairs: a few ulp apart
        torch.testing.assert_close(ts.distances, ex.distances, rtol=4e-6, atol=1e-6)


def test_two_stage_short_shortlist_rescores_global_candidates():
    d = data()
    idx = build(d)
    ts = idx.search(d["qg"], d["ql"], 5, mode="two-stage", shortlist=8, pooled_weight=0)
    glob = idx.search(d["qg"], None, 8, lam=0)  # the shortlist: global distance only
    full = partdist.eval.global_distance(d["qg"], d["gg"]) + 0.7 * partdist.local_dist(d["ql"], d["gl"])
    for q in range(Q):
        assert set(ts.ids[q].tolist()) <= set(glob.ids[q].tolist())
        torch.testing.assert_close(ts.distances[q], full[q, ts.ids[q]])


def test_rerank_within_shortlist_matches_re_ranking_features():
    d = data()
    idx = build(d)
    res = idx.search(d["qg"], d["ql"], 10, mode="two-stage", shortlist=G, rerank=True, k1=6, k2=3)
    for q in (0, 3):
        rr = partdist.eval.re_ranking_features(d["ql"][q : q + 1], d["gl"], d["qg"][q : q + 1], d["gg"], k1=6, k2=3,
                                               lam=0.7)[0]
        order = torch.argsort(rr, stable=True)[:10]
        assert torch.equal(res.ids[q], order)
        torch.testing.assert_close(res.distances[q], rr[order])


def test_float16_storage_is_float32_search_of_rounded_features():
    d = data()
    res16 = build(d, dtype="float16").search(d["qg"], d["ql"], 12)
    r = {n: (t.half().float() if n in ("gg", "gl") else t) for n, t in d.items()}
    v, i = reference_topk(r, 12)
    assert torch.equal(res16.ids, i) and torch.equal(res16.distances, v)
    assert build(d, dtype="float16").memory_bytes() < 0.6 * build(d).memory_bytes()


def test_global_only_and_lam_zero():
    d = data()
    idx = GalleryIndex()
    idx.add(d["gg"])
    res = idx.search(d["qg"], None, 5)
    v, i = partdist.eval.topk_distance(q_global=d["qg"], g_global=d["gg"], k=5)
    assert torch.equal(res.ids, i) and torch.equal(res.distances, v)
    res0 = build(d).search(d["qg"], None, 5, lam=0.0)
    assert torch.equal(res0.ids, i)


def test_rank_metrics_full_ranking_equal_dense_evaluation():
    d = data()
    idx = build(d)
    res = idx.search(d["qg"], d["ql"], G)
    dense = partdist.eval.global_distance(d["qg"], d["gg"]) + 0.7 * partdist.local_dist(d["ql"], d["gl"])
    gids, gp, gc = idx.all_labels()
    cmc, mAP = rank_metrics(res, d["qpids"], d["qcams"], gids, gp, gc, max_rank=10)
    cmc_ref, mAP_ref = partdist.eval.evaluate_rank(dense, d["qpids"], d["gpids"], d["qcams"], d["gcams"], max_rank=10)
    assert abs(mAP - mAP_ref) < 1e-12 and (cmc == cmc_ref).all()


def test_save_load_round_trip(tmp_path):
    d = data()
    idx = build(d, dtype="float16", rows=torch.arange(G).flip(0))
    path = tmp_path / "g.idx"
    idx.save(path)
    for mmap in (True, False):
        back = GalleryIndex.load(path, mmap=mmap)
        assert back.dtype == torch.float16 and back.lam == 0.7 and back.paths == idx.paths
        for a in ("ids", "global_features", "local_features", "pids", "camids"):
            assert torch.equal(getattr(back, a), getattr(idx, a)), a
        r1, r2 = idx.search(d["qg"], d["ql"], 9), back.search(d["qg"], d["ql"], 9)
        assert torch.equal(r1.ids, r2.ids) and torch.equal(r1.distances, r2.distances)
    part = GalleryIndex.load(path, shard=(1, 3))
    assert torch.equal(part.ids, torch.arange(20, 40))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        idx.save(path)
    idx.save(path, overwrite=True)


def test_load_rejects_bad_files(tmp_path):
    d = data()
    good = tmp_path / "good.idx"
    build(d).save(good)
    raw = good.read_bytes()
    (tmp_path / "trunc.idx").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.idx").write_bytes(os.urandom(4096))
    for name in ("trunc.idx", "junk.idx"):
        with pytest.raises(ValueError, match="not a readable partdist gallery index"):
            GalleryIndex.load(tmp_path / name)
    state = build(d).state_dict()
    torch.save({**state, "version": FORMAT_VERSION + 1}, tmp_path / "v2.idx")
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}.*reads version {FORMAT_VERSION}"):
        GalleryIndex.load(tmp_path / "v2.idx")
    torch.save({k: v for k, v in state.items() if k != "local"}, tmp_path / "nolocal.idx")
    with pytest.raises(ValueError, match="unexpected layout .missing local"):
        GalleryIndex.load(tmp_path / "nolocal.idx")
    torch.save({**state, "global": state["global"][:, :5]}, tmp_path / "shape.idx")
    with pytest.raises(ValueError, match="unexpected layout .global features"):
        GalleryIndex.load(tmp_path / "shape.idx")
    torch.save({**state, "tuning": {"version": 1}}, tmp_path / "tuning.idx")
    with pytest.raises(ValueError, match="unexpected layout .tuning"):
        GalleryIndex.load(tmp_path / "tuning.idx")
    torch.save(torch.zeros(3), tmp_path / "tensor.idx")
    with pytest.raises(ValueError, match="not a partdist gallery index"):
        GalleryIndex.load(tmp_path / "tensor.idx")
    with pytest.raises(FileNotFoundError, match="partdist index"):
        GalleryIndex.load(tmp_path / "missing.idx")


def test_bad_input_messages():
    d = data()
    idx = build(d)
    with pytest.raises(ValueError, match=r"q_global has D = 15 .* index holds D = 16"):
        idx.search(d["qg"][:, :15], d["ql"], 3)
    with pytest.raises(ValueError, match=r"lam = 0.7 > 0 .*pass q_local"):
        idx.search(d["qg"], None, 3)
    with pytest.raises(ValueError, match=r"q_local has C = 7 .* C = 8"):
        idx.search(d["qg"], d["ql"][..., :7], 3)
    with pytest.raises(ValueError, match="same queries"):
        idx.search(d["qg"], d["ql"][:3], 3)
    with pytest.raises(ValueError, match=f"k = {G + 1} is more than the gallery size {G}"):
        idx.search(d["qg"], d["ql"], G + 1)
    with pytest.raises(ValueError, match="k must be a positive int"):
        idx.search(d["qg"], d["ql"], 0)
    with pytest.raises(ValueError, match="mode must be one of"):
        idx.search(d["qg"], d["ql"], 3, mode="fast")
    with pytest.raises(ValueError, match="rerank=True needs mode='two-stage'"):
        idx.search(d["qg"], d["ql"], 3, rerank=True)
    with pytest.raises(ValueError, match="shortlist longer than k1"):
        idx.search(d["qg"], d["ql"], 3, mode="two-stage", shortlist=10, rerank=True)
    with pytest.raises(ValueError, match="NaN"):
        idx.search(d["qg"] * float("nan"), d["ql"], 3)
    with pytest.raises(ValueError, match=r"global_features has D = 15 .* D = 16"):
        idx.add(d["gg"][:2, :15], d["gl"][:2])
    with pytest.raises(ValueError, match=r"local_features has \[H, C\] = \[4, 7\]"):
        idx.add(d["gg"][:2], d["gl"][:2, :, :7])
    with pytest.raises(ValueError, match="pass local_features"):
        idx.add(d["gg"][:2])
    with pytest.raises(ValueError, match="same items"):
        idx.add(d["gg"][:2], d["gl"][:3])
    with pytest.raises(ValueError, match="float16 range"):
        GalleryIndex(dtype="float16").add(d["gg"] * 1e6, d["gl"])
    with pytest.raises(ValueError, match="id 5 was added twice"):
        bad = GalleryIndex()
        bad.add(d["gg"][:3], ids=[5, 6, 5])
        bad.search(d["qg"], None, 1)
    with pytest.raises(ValueError, match="index is empty"):
        GalleryIndex().search(d["qg"], None, 1)
    with pytest.raises(ValueError, match="dtype must be one of"):
        GalleryIndex(dtype="int8")
    with pytest.raises(RuntimeError, match="distributed=True needs an initialized"):
        idx.search(d["qg"], d["ql"], 3, distributed=True)


def test_faiss_backend_when_installed():
    pytest.importorskip("faiss")
    d = data()
    idx = build(d)
    ex = idx.search(d["qg"], d["ql"], 10)
    fs = idx.search(d["qg"], d["ql"], 10, mode="two-stage", shortlist=G, backend="faiss")
    assert torch.equal(fs.ids, ex.ids)
    torch.testing.assert_close(fs.distances, ex.distances)


def test_faiss_factory_and_params_when_installed():
    """An IVF index probing every list equals the exact search; nprobe=1 is allowed (and may
    miss); bad factory strings and parameters are errors naming the argument, not FAISS traces."""
    pytest.importorskip("faiss")
    d = data()
    idx = build(d)
    ex = idx.search(d["qg"], d["ql"], 10)
    kw = dict(mode="two-stage", shortlist=G, backend="faiss", faiss_factory="IVF4,Flat")
    full = idx.search(d["qg"], d["ql"], 10, faiss_params="nprobe=4", **kw)
    assert torch.equal(full.ids, ex.ids)
    one = idx.search(d["qg"], d["ql"], 10, faiss_params="nprobe=1", **kw)
    assert one.ids.shape == ex.ids.shape
    # no parameters after some: FAISS's defaults again (nprobe=1), not the last search's
    import faiss

    assert faiss.extract_index_ivf(idx._faiss[1]).nprobe == 1
    idx.search(d["qg"], d["ql"], 10, faiss_params="nprobe=3", **kw)
    assert faiss.extract_index_ivf(idx._faiss[1]).nprobe == 3
    idx.search(d["qg"], d["ql"], 10, **kw)
    assert faiss.extract_index_ivf(idx._faiss[1]).nprobe == 1
    with pytest.raises(ValueError, match=r"faiss_factory 'Bogus12' is not a FAISS index factory string for "
                                         r"D = \d+ \(could not parse index string Bogus12\)"):
        idx.search(d["qg"], d["ql"], 3, mode="two-stage", backend="faiss", faiss_factory="Bogus12")
    with pytest.raises(ValueError, match=r"faiss_params 'efSearch=8' do not apply to the 'IVF4,Flat' index "
                                         r"\(could not set parameter efSearch\); e.g. 'nprobe=32'"):
        idx.search(d["qg"], d["ql"], 3, faiss_params="efSearch=8", **kw)
    with pytest.raises(TypeError, match="faiss_params must be a string, got int"):
        idx.search(d["qg"], d["ql"], 3, faiss_params=4, **kw)


def test_faiss_missing_is_a_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_faiss(name, *a, **kw):
        if name == "faiss":
            raise ImportError("no faiss")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    d = data()
    with pytest.raises(ImportError, match=r"pip install 'partdist\[faiss\]'"):
        build(d).search(d["qg"], d["ql"], 3, mode="two-stage", backend="faiss")


def test_two_stage_covering_shortlist_on_continuous_features():
    """Off the exact (dyadic) grid the kernels round dot products differently (GEMM tiles in the
    exact mode, per pair in the shortlist): same ranking, distances equal to float32 rounding."""
    g = torch.Generator().manual_seed(3)
    gg, gl = torch.randn(80, 32, generator=g), torch.randn(80, 4, 16, generator=g)
    qg, ql = torch.randn(9, 32, generator=g), torch.randn(9, 4, 16, generator=g)
    idx = GalleryIndex()
    idx.add(gg, gl)
    ex = idx.search(qg, ql, 80)
    ts = idx.search(qg, ql, 80, mode="two-stage", shortlist=80)
    assert torch.equal(ts.ids, ex.ids)
    torch.testing.assert_close(ts.distances, ex.distances, rtol=1e-5, atol=1e-5)
