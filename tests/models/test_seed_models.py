"""The seed lecture's systems as reference models (partdist.models.MODEL_SPECS): one training
step and one evaluation per model at small sizes, pair formation in the P x K batch, the
PoseBox warp, the hard synthetic setting, and bad inputs (missing part annotations, wrong
part counts, wrong distances)."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from partdist.data import SyntheticReID, market1501, part_annotations
from partdist.eval import evaluate_model
from partdist.models import MODEL_SPECS, PABP, PDC, PIE, GateSiamese, SCPNet, model_spec
from partdist.models.pairs import batch_pairs
from partdist.models.posebox import assemble_posebox, box_thetas
from partdist.train import TrainConfig, Trainer, build_model, make_batches

H, W = 64, 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: one thread avoids OpenMP spinning on a shared, loaded machine (~10x faster here)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("seed_models"))
    SyntheticReID(root, num_ids=8, num_cams=2, imgs_per_id_cam=2, height=H, width=W, seed=3).generate()
    return root, market1501(root)


def _cfg(name, out, **kw):
    return TrainConfig(model=name, backbone="compact", height=H, width=W, p=2, k=2, epochs=1, iters_per_epoch=1,
                       lr=1e-3, warmup_epochs=0, progress=False, out=out, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_train_step_and_eval(name, synth, tmp_path):
    root, splits = synth
    spec = MODEL_SPECS[name]
    cfg = _cfg(name, str(tmp_path / "run"))
    parts = part_annotations(root, splits.train, spec.needs, name) if spec.needs else None
    num_classes = len({p for _, p, _ in splits.train})
    tr = Trainer(cfg, num_classes, make_batches(splits.train, cfg, parts=parts), log=lambda *a: None)
    before = [p.detach().clone() for p in tr.model.parameters()]
    rec = tr.train_epoch()
    assert rec["iters"] == 1 and np.isfinite(rec["loss"]) and rec["loss"] > 0
    changed = sum(not torch.equal(a, b.detach()) for a, b in zip(before, tr.model.parameters()))
    assert changed > 0
    qp = gp = None
    if spec.needs:
        qp = part_annotations(root, splits.query, spec.needs)
        gp = part_annotations(root, splits.gallery, spec.needs)
    res, dist = evaluate_model(tr.model, splits.query, splits.gallery, H, W, name=name, distance=spec.distance,
                               q_parts=qp, g_parts=gp)
    (dname, r), = res.items()
    assert dname == spec.distance
    assert dist.shape == (len(splits.query), len(splits.gallery)) and torch.isfinite(dist).all()
    assert 0 <= r["mAP"] <= 1 and 0 <= r["rank1"] <= 1 and 0 <= r["mINP"] <= 1 and r["ms_per_query"] > 0


def test_batch_pairs_within_pk_batch():
    pids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])  # P = 3, K = 3
    i, j, same = batch_pairs(pids)
    assert (i < j).all()
    assert int(same.sum()) == 3 * 3 * 2 // 2 == int((~same).sum())
    assert torch.equal(same, pids[i] == pids[j])
    assert len(set(zip(i.tolist(), j.tolist()))) == i.numel()
    with pytest.raises(ValueError, match="no positive pair"):
        batch_pairs(torch.arange(4))


def test_gate_siamese_gate_is_symmetric_and_pairwise():
    torch.manual_seed(0)
    m = GateSiamese(backbone="compact", stripes=4).eval()
    x = torch.randn(3, 3, H, W)
    f = m.features(x)
    d_ab = m.pair_distance(f[:2], f[1:])
    d_ba = m.pair_distance(f[1:], f[:2])
    torch.testing.assert_close(d_ab, d_ba)
    # the gate depends on the other image: a matching stripe is boosted (x2), a far one is not
    a = torch.ones(1, 4, 64)
    b = torch.cat([torch.ones(1, 2, 64), torch.full((1, 2, 64), 20.0)], 1)
    ga, gb = m.gate(a, b)
    torch.testing.assert_close(ga[0, :2], 2 * a[0, :2])
    torch.testing.assert_close(ga[0, 2:], a[0, 2:], atol=1e-6, rtol=0)
    torch.testing.assert_close(gb[0, 2:], b[0, 2:], atol=1e-6, rtol=0)
    torch.testing.assert_close(m.pair_distance(f[:1], f[:1]), torch.zeros(1), atol=1e-5, rtol=0)


def test_posebox_full_box_is_identity():
    x = torch.rand(2, 3, 16, 8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 16.0]]).expand(2, 1, 4)
    out = assemble_posebox(x, box_thetas(boxes, (16, 8)), torch.ones(2, 1, dtype=torch.bool), layout=[(0, 1, 0, 1)])
    torch.testing.assert_close(out, x)
    hidden = assemble_posebox(x, box_thetas(boxes, (16, 8)), torch.zeros(2, 1, dtype=torch.bool), layout=[(0, 1, 0, 1)])
    assert hidden.abs().sum() == 0


def test_scpnet_loss_and_groups():
    m = SCPNet(num_classes=3, parts=4, backbone="compact").train()
    out = m(torch.randn(4, 3, H, W))
    assert out["local"].shape == (4, 4, 64) and len(out["logits"]) == 5
    scp = m.extra_losses(out, torch.tensor([0, 0, 1, 1]))["scp"]
    g = out["global"].view(4, 4, 64)
    torch.testing.assert_close(scp, (g - out["local"]).pow(2).sum(-1).mean())
    with pytest.raises(ValueError, match="must divide"):
        SCPNet(parts=3, backbone="compact")


# ---------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("cls", [PDC, PIE, PABP])
def test_pose_models_reject_bad_keypoints(cls):
    m = cls(num_classes=2, backbone="compact").eval()
    x = torch.randn(2, 3, H, W)
    with pytest.raises(ValueError, match=r"keypoints \[N, 14, 3\]"):
        m(x, torch.zeros(2, 6, 4))  # boxes, not keypoints
    with pytest.raises(ValueError, match=r"keypoints \[N, 14, 3\]"):
        m(x, torch.zeros(2, 13, 3))  # a wrong number of keypoints
    with pytest.raises(TypeError, match="keypoints"):
        m(x, None)


def test_spreid_wrong_part_count(synth):
    root, splits = synth
    m = build_model(_cfg("spreid", "unused"), 2).eval()
    masks = part_annotations(root, splits.train[:2], "masks")
    with pytest.raises(ValueError, match=r"masks \[N, P, h, w\]"):
        m(torch.randn(2, 3, H, W), masks[:, :2])


def test_missing_annotations_clear_errors(synth, tmp_path):
    root, splits = synth
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ValueError, match="no part annotations.*partdist synthetic"):
        part_annotations(str(bare), splits.train, "keypoints", "glad")
    with pytest.raises(ValueError, match="kind must be one of"):
        part_annotations(root, splits.train, "skeleton")
    cfg = _cfg("glad", str(tmp_path / "run"))
    with pytest.raises(ValueError, match="needs keypoints"):
        make_batches(splits.train, cfg)
    m = build_model(cfg, 4)
    with pytest.raises(ValueError, match="needs keypoints for the query and gallery"):
        evaluate_model(m, splits.query, splits.gallery, H, W, name="glad")
    gq = part_annotations(root, splits.query, "keypoints")
    gg = part_annotations(root, splits.gallery, "keypoints")
    with pytest.raises(ValueError, match="needs local features"):
        evaluate_model(m, splits.query, splits.gallery, H, W, name="glad", q_parts=gq, g_parts=gg, distance="dsr")
    with pytest.raises(ValueError, match="not a pair model"):
        evaluate_model(m, splits.query, splits.gallery, H, W, name="glad", q_parts=gq, g_parts=gg, distance="pair")
    with pytest.raises(ValueError, match="model: expected one of"):
        model_spec("resnet")
    with pytest.raises(ValueError, match="takes no --weights"):
        build_model(dataclasses.replace(cfg, model="personnet", weights="w.pth"), 4)


def test_cli_train_part_model_without_annotations(synth, tmp_path, capsys):
    from partdist.cli import main

    root, _ = synth
    # the same images without the annotation file
    plain = tmp_path / "plain"
    import shutil

    for d in ("bounding_box_train", "query", "bounding_box_test"):
        shutil.copytree(os.path.join(root, d), plain / d)
    code = main(["train", "--model", "pdc", "--data", str(plain), "--out", str(tmp_path / "o"), "--backbone", "compact",
                 "--p", "2", "--k", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "partdist train: error: --model pdc:" in err and "needs keypoints" in err and "partdist synthetic" in err
    assert len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "o" / "checkpoint.pt")


# ------------------------------------------------------------------ hard synthetic setting
def test_hard_setting(tmp_path):
    kw = dict(num_ids=4, num_cams=4, imgs_per_id_cam=1, height=H, width=W, seed=1)
    d = SyntheticReID(str(tmp_path / "d"), **kw)
    assert "setting" not in d.config()  # the default manifest (and data) as before
    assert d.config() == SyntheticReID(str(tmp_path / "d2"), setting="default", **kw).config()
    h = SyntheticReID(str(tmp_path / "h"), setting="hard", **kw)
    assert h.config()["setting"] == "hard"
    assert [c.shift_y for c in h.camera_params] != [c.shift_y for c in d.camera_params]
    chroma = lambda c: float(np.ptp(c))  # noqa: E731
    for pid in range(1, 5):
        a, b = d.identity(pid), h.identity(pid)
        assert a["shirt_pattern"] == b["shirt_pattern"]  # same draws, muted colours
        assert chroma(b["shirt"]) < chroma(a["shirt"]) or chroma(a["shirt"]) == 0
    assert not np.array_equal(d.render(1, 1, 0), h.render(1, 1, 0))
    h.generate()
    with open(os.path.join(h.root, "synthetic_reid.json")) as f:
        assert json.load(f)["setting"] == "hard"
    with pytest.raises(ValueError, match="setting must be one of"):
        SyntheticReID(str(tmp_path / "x"), setting="extreme", **kw)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["glad", "idla"])
def test_cli_train_and_eval(name, synth, tmp_path, capsys):
    from partdist.cli import main

    root, _ = synth
    out = str(tmp_path / name)
    args = ["train", "--model", name, "--data", root, "--out", out, "--backbone", "compact", "--height", str(H),
            "--width", str(W), "--p", "2", "--k", "2", "--epochs", "1", "--iters-per-epoch", "1", "--progress", "false"]
    assert main(args) == 0
    assert main(["eval", "--checkpoint", os.path.join(out, "checkpoint.pt"), "--data", root]) == 0
    text = capsys.readouterr().out
    assert ("| pair |" if name == "idla" else "| global |") in text and "ms per query" in text
    if name == "glad":  # DSR on a model without local features: a clear exit, no traceback
        capsys.readouterr()
        code = main(["eval", "--checkpoint", os.path.join(out, "checkpoint.pt"), "--data", root, "--distance", "dsr"])
        err = capsys.readouterr().err
        assert code == 2 and "needs local features" in err and len(err.strip().splitlines()) == 1
