"""partdist.part_pool / keypoints_to_parts / bilinear_pool against the loops of partdist.reference."""

import pytest
import torch
import torch.nn.functional as F

import partdist
from partdist import reference as R
from partdist.pooling import KEYPOINT_NAMES, PART_SCHEMES


def _fmap(n=2, c=5, h=7, w=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, dtype=dtype, generator=g)


# --------------------------------------------------------------------- stripes and grid
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("h,p", [(8, 4), (12, 6), (24, 6), (8, 8)])
def test_stripes_equal_adaptive_pooling_when_divisible(mode, h, p):
    f = _fmap(h=h, w=4)
    feats, vis = partdist.part_pool(f, p, mode)
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    want = pool(f, (p, 1)).squeeze(-1).transpose(1, 2)
    assert feats.shape == (2, p, 5) and vis.shape == (2, p) and vis.dtype == torch.bool and bool(vis.all())
    torch.testing.assert_close(feats, want, rtol=0, atol=1e-12)
    # disjoint equal stripes: stripe i is rows i*h/p .. (i+1)*h/p - 1
    k = h // p
    red = (lambda t: t.mean((2, 3))) if mode == "avg" else (lambda t: t.amax((2, 3)))
    torch.testing.assert_close(feats[:, 1], red(f[:, :, k : 2 * k]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("parts", [3, 5, 9, (2, 3), (3, 4), (7, 6), (1, 1)])
def test_stripes_and_grid_match_the_loop(mode, parts):
    f = _fmap(h=7, w=6)  # 7 rows: not divisible by 3, 5; 9 > 7 repeats rows
    feats, vis = partdist.part_pool(f, parts, mode)
    want, wvis = R.part_pool_stripes_loop(f, parts, mode)
    torch.testing.assert_close(feats, want, rtol=0, atol=1e-12)
    assert torch.equal(vis, wvis)


def test_stripe_rule_when_not_divisible():
    # H = 7, P = 3: stripes are rows [0, 3), [2, 5), [4, 7) (neighbours share a row)
    f = _fmap(h=7, w=2)
    feats, _ = partdist.part_pool(f, 3)
    for i, (a, b) in enumerate([(0, 3), (2, 5), (4, 7)]):
        torch.testing.assert_close(feats[:, i], f[:, :, a:b].mean((2, 3)), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------- boxes
BOXES = torch.tensor(
    [
        [[0, 0, 6, 7], [1.3, 2.2, 4.7, 5.9], [-3, -2, 2, 1.5], [7, 0, 9, 3]],
        [[2, 2, 2, 5], [0.5, 0.5, 1.0, 1.2], [5, 6, 10, 10], [3, 1, 1, 3]],
    ],
    dtype=torch.float64,
)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [None, 1, 2, 3])
def test_boxes_match_the_loop(mode, sampling_ratio):
    f = _fmap()
    feats, vis = partdist.part_pool(f, BOXES, mode, sampling_ratio=sampling_ratio)
    want, wvis = R.part_pool_boxes_loop(f, BOXES, mode, sampling_ratio=sampling_ratio)
    torch.testing.assert_close(feats, want, rtol=0, atol=1e-12)
    assert torch.equal(vis, wvis)
    # visible: inside, partly outside (clipped); invisible: outside, zero width, inverted
    assert vis.tolist() == [[True, True, True, False], [False, True, True, False]]
    assert bool((feats[~vis] == 0).all()) and bool(torch.isfinite(feats).all())


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_boxes_in_image_coordinates(mode):
    f = _fmap(h=8, w=4)
    img_boxes = BOXES * torch.tensor([16.0, 32.0, 16.0, 32.0], dtype=torch.float64)  # image 256 x 64
    a, va = partdist.part_pool(f, img_boxes, mode, image_size=(256, 64))  # per-axis scales 1/32, 1/16
    b, vb = partdist.part_pool(f, BOXES, mode)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.equal(va, vb)
    torch.testing.assert_close(a, R.part_pool_boxes_loop(f, img_boxes, mode, image_size=(256, 64))[0], rtol=0, atol=1e-12)
    # spatial_scale: one factor for both axes
    c, vc = partdist.part_pool(f, BOXES * 16, mode, spatial_scale=1 / 16)
    torch.testing.assert_close(c, b, rtol=0, atol=1e-12)
    assert torch.equal(vc, vb)
    assert a.shape == (2, 4, 5) and va.dtype == torch.bool


def test_whole_map_and_stripe_boxes_reproduce_plain_pooling():
    f = _fmap(h=8, w=4)
    N, H, W = 2, 8, 4
    whole = torch.tensor([0.0, 0, W, H], dtype=torch.float64).expand(N, 1, 4)
    feats, vis = partdist.part_pool(f, whole)  # adaptive: one sample per cell, at the centres
    torch.testing.assert_close(feats[:, 0], f.mean((2, 3)), rtol=0, atol=1e-12)
    feats, _ = partdist.part_pool(f, whole, "max")
    torch.testing.assert_close(feats[:, 0], f.amax((2, 3)), rtol=0, atol=1e-12)
    stripes = torch.tensor([[0.0, 2 * i, W, 2 * i + 2] for i in range(4)], dtype=torch.float64).expand(N, 4, 4)
    for mode in ("avg", "max"):
        a, _ = partdist.part_pool(f, stripes, mode, sampling_ratio=None)
        b, _ = partdist.part_pool(f, 4, mode)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_boxes_outside_are_clipped():
    f = _fmap(h=8, w=4)
    big = torch.tensor([[[-10.0, -10.0, 14.0, 4.0]]], dtype=torch.float64).expand(2, 1, 4)
    inside = torch.tensor([[[0.0, 0.0, 4.0, 4.0]]], dtype=torch.float64).expand(2, 1, 4)
    for mode in ("avg", "max"):
        a, va = partdist.part_pool(f, big, mode, sampling_ratio=4)
        b, vb = partdist.part_pool(f, inside, mode, sampling_ratio=4)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert bool(va.all()) and bool(vb.all())


def test_all_invisible_boxes_give_zeros_and_finite_gradients():
    f = _fmap().requires_grad_()
    boxes = torch.tensor([[[3.0, 3.0, 3.0, 3.0], [-5, -5, -1, -1]]], dtype=torch.float64).expand(2, 2, 4)
    for mode in ("avg", "max"):
        feats, vis = partdist.part_pool(f, boxes, mode)
        assert not bool(vis.any()) and bool((feats == 0).all())
        (g,) = torch.autograd.grad(feats.sum(), f)
        assert bool((g == 0).all())


def test_float32_boxes_with_float32_map():
    f = _fmap(dtype=torch.float32)
    feats, vis = partdist.part_pool(f, BOXES.float(), "avg", sampling_ratio=2)
    want, _ = R.part_pool_boxes_loop(f.double(), BOXES, "avg", sampling_ratio=2)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats.double(), want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------- masks
def test_masks_match_the_loop():
    f = _fmap()
    m = torch.rand(2, 3, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    m[0, 1] = 0  # an all-zero mask: invisible
    feats, vis = partdist.part_pool(f, m)
    want, wvis = R.part_pool_masks_loop(f, m)
    torch.testing.assert_close(feats, want, rtol=0, atol=1e-12)
    assert torch.equal(vis, wvis) and vis.tolist() == [[True, False, True], [True, True, True]]
    assert bool((feats[0, 1] == 0).all())


def test_hard_masks_reproduce_stripes_and_bool_masks_work():
    f = _fmap(h=8, w=4)
    m = torch.zeros(2, 4, 8, 4, dtype=torch.bool)
    for i in range(4):
        m[:, i, 2 * i : 2 * i + 2] = True
    a, va = partdist.part_pool(f, m)
    b, _ = partdist.part_pool(f, 4)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert bool(va.all())
    # scaling a mask does not change the weighted average
    c, _ = partdist.part_pool(f, m.double() * 3.5)
    torch.testing.assert_close(c, b, rtol=0, atol=1e-12)


def test_masks_of_another_size_need_resize_masks():
    f = _fmap(h=4, w=2)
    m = torch.zeros(2, 2, 16, 8, dtype=torch.float64)
    m[:, 0, :8] = 1  # top half of the image
    m[:, 1, 8:] = 1
    with pytest.raises(ValueError, match=r"masks must have the spatial size of fmap \(\[N, P, 4, 2\]\).*resize_masks"):
        partdist.part_pool(f, m)
    a, va = partdist.part_pool(f, m, resize_masks=True)
    b, _ = partdist.part_pool(f, 2)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert bool(va.all())


def test_zero_masks_give_zeros_and_finite_gradients():
    f = _fmap().requires_grad_()
    m = torch.zeros(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    feats, vis = partdist.part_pool(f, m)
    assert not bool(vis.any()) and bool((feats == 0).all())
    gf, gm = torch.autograd.grad(feats.sum(), (f, m))
    assert bool(torch.isfinite(gf).all()) and bool(torch.isfinite(gm).all())


# ---------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize(
    "parts,mode,kw",
    [
        (3, "avg", {}),
        (3, "max", {}),
        ((2, 3), "avg", {}),
        ((2, 2), "max", {}),
        ("boxes", "avg", {}),
        ("boxes", "max", {"sampling_ratio": 2}),
        ("boxes", "avg", {"image_size": (28, 12), "sampling_ratio": 3}),
    ],
)
@pytest.mark.slow
def test_gradcheck_wrt_fmap(parts, mode, kw):
    f = _fmap(n=2, c=3, h=7, w=6).requires_grad_()
    if parts == "boxes":
        parts = BOXES * (torch.tensor([2.0, 4.0, 2.0, 4.0], dtype=torch.float64) if "image_size" in kw else 1)
    assert torch.autograd.gradcheck(lambda t: partdist.part_pool(t, parts, mode, **kw)[0], (f,))


@pytest.mark.slow
def test_gradcheck_masks_wrt_fmap_and_masks():
    f = _fmap(n=2, c=3, h=4, w=3).requires_grad_()
    m = (torch.rand(2, 3, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.1)
    m.requires_grad_()
    assert torch.autograd.gradcheck(lambda t, w: partdist.part_pool(t, w)[0], (f, m))
    # image-sized masks resized onto the map
    big = torch.rand(2, 2, 8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t, w: partdist.part_pool(t, w, resize_masks=True)[0], (f, big))


def test_gradients_match_the_loop():
    f1 = _fmap().requires_grad_()
    f2 = f1.detach().clone().requires_grad_()
    w = torch.randn(2, 4, 5, dtype=torch.float64)
    (partdist.part_pool(f1, BOXES, "avg", sampling_ratio=2)[0] * w).sum().backward()
    (R.part_pool_boxes_loop(f2, BOXES, "avg", sampling_ratio=2)[0] * w).sum().backward()
    torch.testing.assert_close(f1.grad, f2.grad, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------ bilinear_pool
def test_bilinear_pool_matches_loop_and_definition():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 4, 5, 2, dtype=torch.float64, generator=g)
    p = torch.randn(3, 6, 5, 2, dtype=torch.float64, generator=g)
    out = partdist.bilinear_pool(a, p)
    assert out.shape == (3, 24)
    torch.testing.assert_close(out, R.bilinear_pool_loop(a, p), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, torch.einsum("nihw,njhw->nij", a, p).reshape(3, 24) / 10, rtol=0, atol=1e-12)
    assert out[1, 2 * 6 + 5] == pytest.approx(float((a[1, 2] * p[1, 5]).mean()))


def test_bilinear_pool_gradcheck():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 3, 2, 3, dtype=torch.float64, generator=g).requires_grad_()
    p = torch.randn(2, 2, 2, 3, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(partdist.bilinear_pool, (a, p))


# ------------------------------------------------------------------- keypoints_to_parts
def _skeleton(score=1.0):
    """A hand-made standing person in a 128 x 64 image (x, y, score) in LSP order."""
    pts = {
        "head_top": (32, 8), "neck": (32, 24),
        "r_shoulder": (22, 28), "l_shoulder": (42, 28),
        "r_elbow": (18, 46), "l_elbow": (46, 46),
        "r_wrist": (16, 62), "l_wrist": (48, 62),
        "r_hip": (26, 66), "l_hip": (38, 66),
        "r_knee": (25, 92), "l_knee": (39, 92),
        "r_ankle": (24, 118), "l_ankle": (40, 118),
    }
    return torch.tensor([[*pts[n], score] for n in KEYPOINT_NAMES], dtype=torch.float32)


def test_keypoint_order_is_lsp():
    assert KEYPOINT_NAMES[0] == "r_ankle" and KEYPOINT_NAMES[8] == "r_shoulder"
    assert KEYPOINT_NAMES[12] == "neck" and KEYPOINT_NAMES[13] == "head_top" and len(KEYPOINT_NAMES) == 14
    assert {k: len(v) for k, v in PART_SCHEMES.items()} == {"spindle": 7, "glad": 3, "pdc": 6}


def test_glad_boxes_by_hand():
    k = _skeleton()[None]
    boxes, vis = partdist.keypoints_to_parts(k, "glad", image_size=(128, 64), margin=0.0)
    assert boxes.dtype == torch.float32 and vis.dtype == torch.bool
    # head: head top and neck are on x = 32 -> zero width -> invisible without margin
    assert boxes[0].tolist() == [[0, 0, 0, 0], [16, 24, 48, 66], [24, 66, 40, 118]]
    assert vis[0].tolist() == [False, True, True]
    boxes, vis = partdist.keypoints_to_parts(k, "glad", image_size=(128, 64), margin=0.05)  # 6.4 px
    torch.testing.assert_close(
        boxes[0],
        torch.tensor([[25.6, 1.6, 38.4, 30.4], [9.6, 17.6, 54.4, 72.4], [17.6, 59.6, 46.4, 124.4]]),
    )
    assert bool(vis.all())


def test_spindle_and_pdc_boxes_by_hand():
    k = _skeleton()[None]
    boxes, vis = partdist.keypoints_to_parts(k, "spindle", image_size=(128, 64), margin=0.0)
    assert boxes.shape == (1, 7, 4) and bool(vis.all())
    assert boxes[0].tolist() == [
        [22, 8, 42, 28],  # head + shoulders
        [22, 24, 42, 66],  # upper body
        [24, 66, 40, 118],  # lower body
        [16, 28, 22, 62],  # right arm
        [42, 28, 48, 62],  # left arm
        [24, 66, 26, 118],  # right leg
        [38, 66, 40, 118],  # left leg
    ]
    boxes, vis = partdist.keypoints_to_parts(k, "pdc", image_size=(128, 64), margin=0.0)
    assert boxes.shape == (1, 6, 4) and vis[0].tolist() == [False, True, True, True, True, True]
    assert boxes[0, 1].tolist() == [22, 24, 42, 66]


def test_low_scores_hide_parts_and_boxes_are_clipped():
    k = _skeleton()
    k[[0, 1, 4, 5], 2] = 0.1  # knees and ankles unsure: legs keep only their hip
    k[13, :2] = torch.tensor([32.0, -20.0])  # head top above the image
    k[7, :2] = torch.tensor([float("nan"), float("nan")])  # r_elbow missing (NaN), score 1
    boxes, vis = partdist.keypoints_to_parts(k[None], "spindle", image_size=(128, 64), margin=0.0, score_thresh=0.3)
    # lower body: only the two hips count, on one row -> zero height -> invisible (margin 0)
    assert vis[0].tolist() == [True, True, False, True, True, False, False]
    assert boxes[0, 0].tolist() == [22, 0, 42, 28]  # the head top is clipped at y = 0
    assert boxes[0, 3].tolist() == [16, 28, 22, 62]  # the NaN elbow is ignored
    for p in (2, 5, 6):
        assert boxes[0, p].tolist() == [0, 0, 0, 0]
    boxes, vis = partdist.keypoints_to_parts(k[None], "spindle", image_size=(128, 64), margin=0.05)
    assert vis[0, 2] and boxes[0, 2].tolist() == pytest.approx([19.6, 59.6, 44.4, 72.4])  # hips, padded
    boxes, vis = partdist.keypoints_to_parts(k[None], "spindle", image_size=(128, 64), margin=0.0, min_keypoints=3)
    assert vis[0].tolist() == [True, True, False, False, True, False, False]
    # a skeleton entirely outside the image: nothing visible
    far = _skeleton()
    far[:, 0] += 500
    boxes, vis = partdist.keypoints_to_parts(far[None], "glad", image_size=(128, 64))
    assert not bool(vis.any()) and bool((boxes == 0).all())


def test_keypoint_boxes_feed_part_pool():
    k = torch.stack([_skeleton(), _skeleton(0.0)])  # the second person has no confident keypoint
    boxes, vis = partdist.keypoints_to_parts(k, "pdc", image_size=(128, 64))
    assert vis[0].all() and not vis[1].any()
    f = _fmap(n=2, c=4, h=8, w=4, dtype=torch.float32)
    feats, pvis = partdist.part_pool(f, boxes, image_size=(128, 64))
    assert torch.equal(pvis, vis) and bool((feats[1] == 0).all()) and feats.shape == (2, 6, 4)


# --------------------------------------------------------------------------- bad inputs
def _bad_cases():
    f = _fmap(dtype=torch.float32)
    b = BOXES.float()
    m = torch.rand(2, 3, 7, 6)
    return [
        (lambda: partdist.part_pool(f[0], 3), ValueError, r"part_pool: fmap must be a 4-D tensor \[N, C, H, W\]"),
        (lambda: partdist.part_pool(f.long(), 3), TypeError, r"part_pool: fmap must be a floating-point"),
        (lambda: partdist.part_pool("x", 3), TypeError, r"part_pool: fmap must be a torch.Tensor"),
        (lambda: partdist.part_pool(f, 3, "sum"), ValueError, r"mode must be 'avg' or 'max'"),
        (lambda: partdist.part_pool(f, 0), ValueError, r"parts \(number of stripes\) must be a positive int"),
        (lambda: partdist.part_pool(f, True), TypeError, r"parts must be an int"),
        (lambda: partdist.part_pool(f, (2, 0)), ValueError, r"parts\[1\] \(grid columns\) must be a positive int"),
        (lambda: partdist.part_pool(f, (2, 3, 4)), TypeError, r"parts must be an int P \(stripes\), a \(gh, gw\) grid"),
        (lambda: partdist.part_pool(f, torch.rand(2, 3)), ValueError, r"boxes \[N, P, 4\] or masks \[N, P, H, W\]"),
        (lambda: partdist.part_pool(f, b[..., :3]), ValueError, r"boxes must be a 3-D tensor \[N, P, 4\]"),
        (lambda: partdist.part_pool(f, b[:1]), ValueError, r"boxes must hold one row per image of fmap \(\[2, P, 4\]\)"),
        (lambda: partdist.part_pool(f, b.long()), TypeError, r"boxes must be a floating-point"),
        (lambda: partdist.part_pool(f, b * float("nan")), ValueError, r"boxes must be finite"),
        (lambda: partdist.part_pool(f, b, spatial_scale=0.5, image_size=(7, 6)), ValueError, r"not both"),
        (lambda: partdist.part_pool(f, b, spatial_scale=-1.0), ValueError, r"spatial_scale must be a positive"),
        (lambda: partdist.part_pool(f, b, image_size=(7,)), ValueError, r"image_size must be a pair \(H_img, W_img\)"),
        (lambda: partdist.part_pool(f, b, sampling_ratio=0), ValueError, r"sampling_ratio must be a positive int"),
        (lambda: partdist.part_pool(f, 3, sampling_ratio=2), ValueError, r"apply to boxes \[N, P, 4\] only"),
        (lambda: partdist.part_pool(f, 3, resize_masks=True), ValueError, r"resize_masks applies to masks"),
        (lambda: partdist.part_pool(f, m[:1]), ValueError, r"masks must hold one row per image of fmap"),
        (lambda: partdist.part_pool(f, m[:, :, :5]), ValueError, r"masks must have the spatial size of fmap"),
        (lambda: partdist.part_pool(f, m.long()), TypeError, r"masks must be a floating-point or bool tensor"),
        (lambda: partdist.part_pool(f, m.double()), TypeError, r"masks must have the dtype of fmap \(torch.float32\)"),
        (lambda: partdist.part_pool(f, -m), ValueError, r"masks must be finite and >= 0"),
        (lambda: partdist.part_pool(f, m, "max"), ValueError, r"masks are pooled by weighted average only"),
        (lambda: partdist.keypoints_to_parts(torch.rand(2, 13, 3), image_size=(8, 4)), ValueError,
         r"keypoints_to_parts: kpts must be a 3-D tensor \[N, 14, 3\]"),
        (lambda: partdist.keypoints_to_parts(torch.rand(14, 3), image_size=(8, 4)), ValueError, r"\[N, 14, 3\]"),
        (lambda: partdist.keypoints_to_parts(torch.ones(2, 14, 3, dtype=torch.int64), image_size=(8, 4)), TypeError,
         r"kpts must be a floating-point"),
        (lambda: partdist.keypoints_to_parts(torch.rand(2, 14, 3), "dpc", image_size=(8, 4)), ValueError,
         r"scheme must be one of \['glad', 'pdc', 'spindle'\]"),
        (lambda: partdist.keypoints_to_parts(torch.rand(2, 14, 3)), ValueError, r"image_size=\(H_img, W_img\) is required"),
        (lambda: partdist.keypoints_to_parts(torch.rand(2, 14, 3), image_size=(8, 4), margin=-1), ValueError,
         r"margin must be >= 0"),
        (lambda: partdist.keypoints_to_parts(torch.rand(2, 14, 3), image_size=(8, 4), min_keypoints=0), ValueError,
         r"min_keypoints must be a positive int"),
        (lambda: partdist.bilinear_pool(torch.rand(2, 3, 4), torch.rand(2, 3, 4, 5)), ValueError,
         r"bilinear_pool: a must be a 4-D tensor \[N, Ca, H, W\]"),
        (lambda: partdist.bilinear_pool(torch.rand(2, 3, 4, 5), torch.rand(3, 2, 4, 5)), ValueError,
         r"must agree in N, H and W"),
        (lambda: partdist.bilinear_pool(torch.rand(2, 3, 4, 5), torch.rand(2, 2, 5, 4)), ValueError,
         r"must agree in N, H and W"),
        (lambda: partdist.bilinear_pool(torch.rand(2, 3, 4, 5), torch.rand(2, 2, 4, 5).double()), TypeError,
         r"p must have the same dtype as a"),
        (lambda: partdist.bilinear_pool(torch.ones(2, 3, 4, 5, dtype=torch.int32), torch.rand(2, 2, 4, 5)), TypeError,
         r"a must be a floating-point"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    fn, exc, msg = _bad_cases()[case]
    with pytest.raises(exc, match=msg):
        fn()


def test_docs_part_example_runs():
    import pathlib
    import re

    src = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "parts.md").read_text()
    code = re.search(r"## Pooling a feature map into parts.*?```python\n(.*?)```", src, re.S).group(1)
    ns = {}
    torch.manual_seed(0)
    exec(compile(code, "docs/parts.md", "exec"), ns)
    assert ns["stripes"].shape == (2, 6, 256) and ns["parts"].shape == (2, 7, 256) and ns["vis"].shape == (2, 7)
    assert ns["soft"].shape == (2, 3, 256) and ns["pabp"].shape == (2, 256 * 8)
    assert torch.equal(ns["vis"] & ~ns["kvis"], torch.zeros_like(ns["vis"]))


def test_empty_batches_and_no_parts():
    f = _fmap(n=0)
    for parts in (3, (2, 2), torch.zeros(0, 2, 4, dtype=torch.float64), torch.zeros(0, 2, 7, 6, dtype=torch.float64)):
        feats, vis = partdist.part_pool(f, parts)
        assert feats.shape[0] == 0 and vis.shape[0] == 0
    feats, vis = partdist.part_pool(_fmap(), torch.zeros(2, 0, 4, dtype=torch.float64), "max")
    assert feats.shape == (2, 0, 5) and vis.shape == (2, 0)
    boxes, vis = partdist.keypoints_to_parts(torch.zeros(0, 14, 3), "pdc", image_size=(8, 4))
    assert boxes.shape == (0, 6, 4) and vis.shape == (0, 6)


# ------------------------------------------------------------------ boxes via torchvision
def test_boxes_are_torchvision_roi_align_inside_the_map():
    from torchvision.ops import roi_align

    f = _fmap()
    inside = torch.tensor([[[0.5, 1.0, 5.5, 6.0], [1.3, 2.2, 4.7, 5.9]], [[2, 0, 6, 7], [0, 3.5, 2.5, 4.0]]],
                          dtype=torch.float64)
    rois = [b for b in inside]
    for sr in (1, 2, 3):
        feats, vis = partdist.part_pool(f, inside, "avg", sampling_ratio=sr)
        want = roi_align(f, rois, 1, 1.0, sr, aligned=True).reshape(2, 2, 5)
        torch.testing.assert_close(feats, want, rtol=0, atol=1e-12)
        assert bool(vis.all())
    feats, _ = partdist.part_pool(f, inside, "avg")  # adaptive: torchvision's per-box grid
    torch.testing.assert_close(feats, roi_align(f, rois, 1, 1.0, 0, aligned=True).reshape(2, 2, 5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_a_box_feature_does_not_depend_on_the_other_boxes(mode):
    f = _fmap()
    small = BOXES[:, 1:2]
    alone, _ = partdist.part_pool(f, small, mode)
    with_big, _ = partdist.part_pool(f, torch.cat([BOXES[:, :1], small], 1), mode)
    torch.testing.assert_close(with_big[:, 1:], alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_boxes_in_half_precision(dtype, mode):
    f = _fmap(dtype=torch.float32)
    want, wvis = R.part_pool_boxes_loop(f.double(), BOXES, mode, sampling_ratio=2)
    feats, vis = partdist.part_pool(f.to(dtype), BOXES.to(dtype), mode, sampling_ratio=2)
    assert feats.dtype == dtype and torch.equal(vis, wvis)
    torch.testing.assert_close(feats.double(), want, rtol=2e-2, atol=3e-2)


def test_boxes_non_contiguous_map_and_autocast():
    f = _fmap(n=2, c=5, h=6, w=7).transpose(2, 3)  # [2, 5, 7, 6], not contiguous
    assert not f.is_contiguous()
    a, _ = partdist.part_pool(f, BOXES, "avg")
    b, _ = partdist.part_pool(f.contiguous(), BOXES, "avg")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    f32 = f.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c, _ = partdist.part_pool(f32, BOXES.float(), "avg")
    torch.testing.assert_close(c.double(), b, rtol=2e-2, atol=3e-2)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_boxes_under_torch_compile(mode):
    f = _fmap(dtype=torch.float32).requires_grad_()
    boxes = BOXES.float()
    fn = torch.compile(lambda t, b: partdist.part_pool(t, b, mode, sampling_ratio=2)[0])
    got = fn(f, boxes)
    want = partdist.part_pool(f, boxes, mode, sampling_ratio=2)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    (g1,) = torch.autograd.grad(got.sum(), f)
    (g2,) = torch.autograd.grad(want.sum(), f)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
