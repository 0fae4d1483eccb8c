"""Part heads (GLAD, SpindleNet, SPReID) on SyntheticReID's ground-truth parts: the part files,
one training step with the existing losses, evaluation through extract_features, bad inputs."""

import dataclasses
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from partdist.data import (
    SYNTHETIC_PARTS,
    CameraParams,
    PartImageDataset,
    SyntheticReID,
    build_transforms,
    load_synthetic_parts,
    market1501,
)
from partdist.data.transforms import KEYPOINT_FLIP
from partdist.eval import evaluate_rank, extract_features, global_distance
from partdist.losses import CrossEntropyLabelSmooth, TripletLoss
from partdist.models import GLAD, SpindleNet, SPReID

H, W = 128, 64
CAMS = [
    CameraParams(),
    CameraParams(shift_y=0.1),
    # always occluded from below: the lower body is hidden
    CameraParams(occlusion_prob=1.0, occlusion_frac=(0.4, 0.45), occlusion_side="bottom"),
]
CFG = dict(num_ids=8, num_cams=3, imgs_per_id_cam=2, height=H, width=W, seed=4, camera_params=CAMS,
           num_distractors=1)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_parts")
    SyntheticReID(root, **CFG).generate()
    return str(root), market1501(str(root))


# ---------------------------------------------------------------------- ground-truth parts
def test_synthetic_parts_file(synth):
    root, splits = synth
    allp = load_synthetic_parts(root)
    M = len(SyntheticReID(root, **CFG).plan())
    assert allp["boxes"].shape == (M, 3, 4) and allp["visibility"].shape == (M, 3)
    assert allp["masks"].shape == (M, 3, H, W) and allp["masks"].dtype == bool
    assert allp["keypoints"].shape == (M, 14, 3) and tuple(allp["part_names"]) == SYNTHETIC_PARTS
    p = load_synthetic_parts(root, splits.train)
    assert p["boxes"].shape[0] == len(splits.train)
    for k, (path, _pid, cam) in enumerate(splits.train):
        assert p["names"][k].endswith(os.path.basename(path))
        masks, boxes, vis, kp = p["masks"][k], p["boxes"][k], p["visibility"][k], p["keypoints"][k]
        for j in range(3):  # the box is the bounding box of the mask
            rows, cols = np.nonzero(masks[j])
            if rows.size:
                assert boxes[j].tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            else:
                assert not vis[j] and not boxes[j].any()
        assert not (masks[0] & masks[1]).any() and not (masks[1] & masks[2]).any()
        if cam == 2:  # occluded from below: legs hidden, ankles and knees not confident
            assert vis.tolist() == [True, True, False] and kp[[0, 1, 4, 5], 2].max() == 0
        else:
            assert vis[:2].all() and kp[[12, 13], 2].min() == 1
        assert (boxes[:, 1] < boxes[:, 3]).all() or not vis.all()
    # parts are ordered top to bottom
    vis_all = p["visibility"].all(1)
    assert (p["boxes"][vis_all, 0, 1] < p["boxes"][vis_all, 1, 1]).all()
    assert (p["boxes"][vis_all, 1, 1] < p["boxes"][vis_all, 2, 1]).all()


def test_part_file_is_added_to_an_older_data_set(synth, tmp_path):
    small = dict(CFG, num_ids=3, num_cams=2, camera_params=CAMS[:2], num_distractors=0, height=64, width=32)
    root = tmp_path / "old"
    SyntheticReID(root, **small).generate()
    first = load_synthetic_parts(root)
    before = os.path.getmtime(root / "query" / sorted(os.listdir(root / "query"))[0])
    (root / "synthetic_parts.npz").unlink()  # as written before the parts existed
    with pytest.raises(FileNotFoundError, match="no synthetic_parts.npz"):
        load_synthetic_parts(root)
    SyntheticReID(root, **small).generate()
    again = load_synthetic_parts(root)
    for k in ("boxes", "visibility", "masks", "keypoints", "names"):
        assert np.array_equal(first[k], again[k]), k
    assert os.path.getmtime(root / "query" / sorted(os.listdir(root / "query"))[0]) == before
    with pytest.raises(KeyError, match=r"items\[0\]"):
        load_synthetic_parts(root, [("/elsewhere/0001_c1s1_000001_00.jpg", 1, 0)])


def test_parts_follow_the_occluder():
    ds = SyntheticReID("/nonexistent-unused", **dict(CFG, height=64, width=32))
    cam = dataclasses.replace(CAMS[2], occlusion_side="left", occlusion_frac=(0.5, 0.5))
    img, info = ds._render(3, 0, 1, cam)
    parts = info["parts"]
    assert info["occluded"] and parts["masks"].shape == (3, 64, 32) and parts["keypoints"].dtype == np.float32
    # no visible part pixel and no confident keypoint lies under the occluder (the left half)
    left, right = info["cx"] - 0.2 * info["height"], info["cx"] + 0.2 * info["height"]
    edge = left + (right - left) * 0.5
    assert not parts["masks"][:, :, np.arange(32) < edge].any()
    kp = parts["keypoints"]
    assert (kp[kp[:, 2] > 0, 0] >= edge).all() and (kp[kp[:, 0] < edge, 2] == 0).all()
    assert np.array_equal(ds.parts(3, 0, 1)["boxes"], ds._render(3, 0, 1)[1]["parts"]["boxes"])


# ------------------------------------------------------------------------------- loaders
def _dataset(splits, root, split, kind):
    items = getattr(splits, split)
    p = load_synthetic_parts(root, items)
    parts = {"boxes": p["boxes"], "keypoints": p["keypoints"], "masks": p["masks"]}[kind]
    return PartImageDataset(items, parts, build_transforms(H, W, is_train=False)), p


def test_part_image_dataset_scales_boxes_and_keypoints(synth):
    root, splits = synth
    p = load_synthetic_parts(root, splits.query)
    ds = PartImageDataset(splits.query, p["boxes"], build_transforms(2 * H, W, is_train=False))
    img, pid, cam, boxes = ds[0]
    assert img.shape == (3, 2 * H, W) and ds.kind == "boxes"
    assert torch.equal(boxes, torch.as_tensor(p["boxes"][0]) * torch.tensor([1.0, 2.0, 1.0, 2.0]))
    dk = PartImageDataset(splits.query, p["keypoints"], build_transforms(2 * H, W, is_train=False))
    kp = dk[0][3]
    assert dk.kind == "keypoints" and torch.equal(kp[:, 2], torch.as_tensor(p["keypoints"][0, :, 2]))
    torch.testing.assert_close(kp[:, 1], torch.as_tensor(p["keypoints"][0, :, 1]) * 2)
    dm = PartImageDataset(splits.query, p["masks"])
    assert dm.kind == "masks" and dm[0][3].dtype == torch.bool and dm[0][3].shape == (3, H, W)
    with pytest.raises(ValueError, match=r"parts must hold one row per item of data"):
        PartImageDataset(splits.query, p["boxes"][:-1])
    with pytest.raises(ValueError, match=r"boxes \[M, P, 4\], keypoints \[M, 14, 3\] or masks"):
        PartImageDataset(splits.query, p["keypoints"][:, :13])


# ------------------------------------------------------------- training step + evaluation
HEADS = [
    ("glad", lambda n: GLAD(n, backbone="compact", last_stride=1), "boxes"),
    ("glad_keypoints", lambda n: GLAD(n, backbone="compact", last_stride=1), "keypoints"),
    ("spindle", lambda n: SpindleNet(n, backbone="compact", last_stride=1, embed_dim=64), "keypoints"),
    ("spreid", lambda n: SPReID(n, num_parts=3, backbone="compact", last_stride=1), "masks"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,make,kind", HEADS, ids=[h[0] for h in HEADS])
def test_one_training_step_then_evaluation(synth, name, make, kind):
    root, splits = synth
    torch.manual_seed(0)
    pids = sorted({pid for _, pid, _ in splits.train})
    model = make(len(pids))
    ds, p = _dataset(splits, root, "train", kind)
    # a P x K batch: 4 identities x 2 images (cameras 0 and 2: the lower body is hidden in 2)
    idx = [i for i, (_, pid, cam) in enumerate(splits.train) if cam in (0, 2)][::2][:8]
    imgs, labels, _, parts = zip(*(ds[i] for i in idx))
    imgs, parts = torch.stack(imgs), torch.stack(parts)
    labels = torch.tensor([pids.index(x) for x in labels])
    vis = torch.as_tensor(p["visibility"][idx]) if kind != "keypoints" else None
    model.train()
    out = model(imgs, parts, vis) if vis is not None else model(imgs, parts)
    assert out["local"] is None and out["parts"].shape[:2] == out["part_visibility"].shape
    assert not out["part_visibility"].all()  # the occluded camera hides parts
    logits = out["logits"] if isinstance(out["logits"], list) else [out["logits"]]
    id_loss = sum(CrossEntropyLabelSmooth(len(pids))(lg, labels) for lg in logits) / len(logits)
    loss = id_loss + TripletLoss(0.3)(out["global"], labels)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [q.detach().clone() for q in model.parameters()]
    opt.zero_grad()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(q.grad).all() for q in model.parameters() if q.grad is not None)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    # evaluation: extract features -> global distance -> evaluate_rank
    q, _ = _dataset(splits, root, "query", kind)
    g, _ = _dataset(splits, root, "gallery", kind)
    qf = extract_features(model, DataLoader(q, batch_size=8))
    gf = extract_features(model, DataLoader(g, batch_size=8))
    assert model.training  # extract_features restores the mode
    assert qf["global"].shape == (len(splits.query), model.feat_dim)
    assert qf["part_visibility"].shape == qf["parts"].shape[:2] == (len(splits.query), model.num_parts)
    dist = global_distance(qf["global"], gf["global"])
    cmc, mAP = evaluate_rank(dist, qf["pids"], gf["pids"], qf["camids"], gf["camids"])
    assert 0 <= float(mAP) <= 1 and 0 <= float(cmc[0]) <= 1
    with pytest.raises(ValueError, match="flip=True is not supported"):
        extract_features(model, DataLoader(q, batch_size=8), flip=True)


def test_heads_reject_bad_parts():
    x = torch.rand(2, 3, 64, 32)
    glad, spindle, spreid = GLAD(backbone="compact"), SpindleNet(backbone="compact"), SPReID(backbone="compact")
    with pytest.raises(ValueError, match=r"GLAD: parts must be boxes \[N, 3, 4\] = \[2, 3, 4\] or keypoints"):
        glad(x, torch.rand(2, 7, 4))
    with pytest.raises(ValueError, match=r"SpindleNet: keypoints must have shape \[N, 14, 3\] = \[2, 14, 3\]"):
        spindle(x, torch.rand(2, 13, 3))
    with pytest.raises(TypeError, match=r"GLAD: parts must be boxes"):
        glad(x, None)
    with pytest.raises(TypeError, match=r"GLAD: visibility must be a bool tensor \[N, P\] = \[2, 3\]"):
        glad(x, torch.rand(2, 3, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"visibility must have shape \[N, P\] = \[2, 3\]"):
        glad(x, torch.rand(2, 3, 4), torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"SPReID: parts must be masks \[N, P, h, w\] = \[2, 3, h, w\]"):
        spreid(x, torch.rand(2, 4, 64, 32))
    with pytest.raises(TypeError, match=r"part_pool: masks must be a floating-point or bool tensor"):
        spreid(x, torch.ones(2, 3, 64, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"expected images \[N, 3, H, W\]"):
        glad(torch.rand(2, 1, 64, 32), torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match=r"num_parts: expected a positive int"):
        SPReID(num_parts=0, backbone="compact")
    with pytest.raises(ValueError, match=r"pool: expected 'avg' or 'max'"):
        GLAD(backbone="compact", pool="min")


def test_extract_features_needs_the_parts_in_the_batch(synth):
    _, splits = synth
    from partdist.data import ImageDataset

    plain = ImageDataset(splits.query[:2], build_transforms(H, W, is_train=False))
    with pytest.raises(ValueError, match=r"the loader must yield \(images, pids, camids, parts\)"):
        extract_features(GLAD(backbone="compact"), DataLoader(plain, batch_size=2))


def test_part_models_train_with_flips_crops_and_erasing(synth):
    """The training pipeline of a part model flips, pads + crops and erases, and the keypoints move
    with the image: one flip (or none) and one crop shift map every keypoint left in it."""
    from partdist.data import part_annotations
    from partdist.data.transforms import ReIDTransform
    from partdist.train import TrainConfig, make_batches

    root, splits = synth
    cfg = TrainConfig(model="glad", backbone="compact", height=H, width=W, p=2, k=2, seed=0, out="unused")
    kp = part_annotations(root, splits.train, "keypoints")
    batches = make_batches(splits.train, cfg, parts=kp)
    images, pids, parts = next(iter(batches(0)))
    assert images.shape == (4, 3, H, W) and parts.shape == (4, 14, 3)
    ds = PartImageDataset(splits.train, kp, build_transforms(H, W, is_train=True), seed=0)
    assert isinstance(ds.transform, ReIDTransform)
    steps = [type(t).__name__ for t in ds.transform.geometry.transforms + ds.transform.pixels.transforms]
    assert {"RandomHorizontalFlip", "RandomCrop", "RandomErasing"} <= set(steps)
    plain = PartImageDataset(splits.train, kp, build_transforms(H, W, is_train=False))
    flips = shifts = 0
    for i in range(24):
        p, ref = ds[i][3], plain[i][3]
        # one flip (or none) and one crop shift (dx, dy) map every keypoint left in the image
        fits = []
        for flip in (False, True):
            src = ref[list(KEYPOINT_FLIP)] if flip else ref
            x = W - src[:, 0] if flip else src[:, 0]
            seen = p[:, 2] > 0
            assert bool((src[seen, 2] > 0).all())  # only keypoints visible before can be visible after
            dx, dy = p[seen, 0] - x[seen], p[seen, 1] - src[seen, 1]
            if seen.any() and float(dx.max() - dx.min()) < 1e-4 and float(dy.max() - dy.min()) < 1e-4:
                if abs(float(dx[0])) <= 10 and abs(float(dy[0])) <= 10:  # pad 10 + crop
                    fits.append((flip, round(float(dx[0])), round(float(dy[0]))))
        assert fits, f"item {i}: the keypoints did not move with the image"
        # (a figure centred in the image fits both ways: its skeleton is left-right symmetric)
        flips += all(f[0] for f in fits)
        shifts += all((f[1], f[2]) != (0, 0) for f in fits)
    assert flips > 0 and shifts > 0
