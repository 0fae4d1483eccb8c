"""partdist.data.transforms: the v2 pipelines, and part annotations (boxes, keypoints, masks) that
land on the same pixels of the image after flip, pad + crop and random erasing."""

import numpy as np
import pytest
import torch
from PIL import Image

from partdist.data import build_transforms
from partdist.data import transforms as T
from partdist.pooling import KEYPOINT_NAMES

H, W = 40, 24
RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # no normalization: pixels stay readable


def coord_image():
    """Each pixel holds its own position: R = column, G = row, B = 255 (padding has B = 0)."""
    yy, xx = np.mgrid[0:H, 0:W]
    return Image.fromarray(np.stack([xx, yy, np.full_like(xx, 255)], -1).astype(np.uint8))


def read_coords(img):
    """[H', W'] origin column, origin row and a 'not padding' mask of a transformed coord_image."""
    v = (img * 255).round().long()
    return v[0], v[1], v[2] == 255


def annotations(seed):
    g = np.random.default_rng(seed)
    x1, y1 = g.integers(0, W - 4, 5), g.integers(0, H - 4, 5)
    boxes = np.stack([x1, y1, x1 + g.integers(1, 8, 5), y1 + g.integers(1, 12, 5)], 1).clip(0, [W, H, W, H])
    cols, rows = g.integers(0, W, 14), g.integers(0, H, 14)
    kpts = np.stack([cols + 0.5, rows + 0.5, g.uniform(0.2, 1.0, 14)], 1)  # pixel centres, score > 0
    masks = g.random((3, H, W)) < 0.3
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(kpts, dtype=torch.float32), torch.tensor(masks)


def train_tf(**kw):
    return build_transforms(H, W, is_train=True, random_erase=False, **RAW, **kw)


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_boxes_cover_the_same_pixels(seed):
    im, (boxes, _, _) = coord_image(), annotations(seed)
    img, out = train_tf()(im, boxes, "boxes", generator=torch.Generator().manual_seed(seed))
    ox, oy, real = read_coords(img)
    assert img.shape == (3, H, W) and out.shape == boxes.shape
    for b, o in zip(boxes.long().tolist(), out.tolist()):
        # every original pixel of the box that is still in the image lies in the new box, and no other
        inside_old = real & (ox >= b[0]) & (ox < b[2]) & (oy >= b[1]) & (oy < b[3])
        ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
        inside_new = (jj >= o[0]) & (jj < o[2]) & (ii >= o[1]) & (ii < o[3])
        assert torch.equal(inside_old, inside_new & real)
        if not inside_old.any():
            assert o[2] <= o[0] or o[3] <= o[1]  # cropped away: no area left (invisible)


@pytest.mark.parametrize("seed", SEEDS)
def test_keypoints_land_on_the_same_pixels_and_swap_sides_on_a_flip(seed):
    im, (_, kpts, _) = coord_image(), annotations(seed)
    img, out = train_tf()(im, kpts, "keypoints", generator=torch.Generator().manual_seed(seed))
    ox, oy, real = read_coords(img)
    rows = real.any(1).nonzero()[:, 0]
    r = rows[len(rows) // 2]
    cols = real[r].nonzero()[:, 0]
    flipped = bool(ox[r, cols[-1]] < ox[r, cols[0]]) if len(cols) > 1 else False
    order = list(T.KEYPOINT_FLIP) if flipped else list(range(14))
    for m in range(14):
        x, y, s = out[m].tolist()
        src = kpts[order[m]]
        i, j = int(np.floor(y)), int(np.floor(x))
        if 0 <= i < H and 0 <= j < W:
            assert (x - j, y - i) == (0.5, 0.5)  # still a pixel centre
            if real[i, j]:
                assert (int(ox[i, j]), int(oy[i, j])) == (int(src[0]), int(src[1]))
                assert s == pytest.approx(float(src[2]))
        else:
            assert s == 0  # moved out of the image: not visible


@pytest.mark.parametrize("seed", SEEDS)
def test_masks_follow_the_pixels(seed):
    im, (_, _, masks) = coord_image(), annotations(seed)
    img, out = train_tf()(im, masks, "masks", generator=torch.Generator().manual_seed(seed))
    ox, oy, real = read_coords(img)
    assert out.dtype == torch.bool and out.shape == masks.shape
    want = masks[:, oy.clamp(0, H - 1), ox.clamp(0, W - 1)] & real
    assert torch.equal(out, want)


def test_a_flip_and_a_crop_happen():
    """The tests above see flipped and shifted images (the seeds cover both)."""
    flips = shifts = 0
    for seed in SEEDS:
        img = train_tf()(coord_image(), generator=torch.Generator().manual_seed(seed))
        ox, oy, real = read_coords(img)
        flips += bool(ox[20, 12] > ox[20, 13])
        shifts += bool(not real.all() or ox[20].max() != W - 1 and ox[20].min() != 0)
    assert 0 < flips < len(SEEDS) and shifts > 0


def test_flip_mirrors_continuous_coordinates_and_names():
    tf = build_transforms(H, W, is_train=True, flip_p=1.0, pad=0, random_erase=False, **RAW)
    im = coord_image()
    kpts = annotations(1)[1]
    img, out = tf(im, kpts, "keypoints")
    assert torch.equal(img, T.build_transforms(H, W, is_train=False, **RAW)(im).flip(-1))
    flip = list(T.KEYPOINT_FLIP)
    torch.testing.assert_close(out[:, 0], W - kpts[flip, 0])
    torch.testing.assert_close(out[:, 1:], kpts[flip, 1:])
    box = torch.tensor([[2.0, 3.0, 5.0, 9.0]])
    assert tf(im, box, "boxes")[1].tolist() == [[W - 5.0, 3.0, W - 2.0, 9.0]]
    names = [KEYPOINT_NAMES[i] for i in flip]
    assert names[0] == "l_ankle" and names[8] == "l_shoulder" and names[12:] == ["neck", "head_top"]
    assert [flip[i] for i in flip] == list(range(14))


def test_random_erasing_changes_pixels_only():
    im = coord_image()
    boxes, kpts, masks = annotations(3)
    plain = train_tf()
    erase = build_transforms(H, W, is_train=True, random_erase=True, erase_p=1.0, **RAW)
    for seed in range(6):
        for parts, kind in ((boxes, "boxes"), (kpts, "keypoints"), (masks, "masks")):
            a_img, a = plain(im, parts, kind, generator=torch.Generator().manual_seed(seed))
            b_img, b = erase(im, parts, kind, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(a, b)
        changed = (a_img != b_img).any(0)
        ys, xs = changed.nonzero(as_tuple=True)
        assert 0.02 * H * W * 0.5 <= len(ys) <= 0.4 * H * W
        assert (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1) == len(ys)  # one rectangle
        torch.testing.assert_close(b_img[:, changed], torch.tensor(T.ERASE_VALUE)[:, None].expand(3, len(ys)))


def test_generator_makes_it_reproducible_and_leaves_the_global_rng_alone():
    tf = build_transforms(32, 16, is_train=True)
    im = coord_image()
    state = torch.get_rng_state()
    outs = [tf(im, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1, 2, 3)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(outs[0], outs[1]) and outs[0].shape == (3, 32, 16) and outs[0].dtype == torch.float32
    assert any(not torch.equal(outs[0], o) for o in outs[2:])


def test_test_pipeline_is_resize_and_normalize():
    im = coord_image()
    x = build_transforms(20, 12, is_train=False)(im)
    arr = torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy())
    from torchvision.transforms.v2 import functional as TF

    ref = TF.resize(arr, [20, 12], antialias=True).float() / 255
    ref = (ref - torch.tensor(T.IMAGENET_MEAN)[:, None, None]) / torch.tensor(T.IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(x, ref)
    # tensors in, too: uint8 and float [C, H, W]
    torch.testing.assert_close(build_transforms(20, 12, is_train=False)(arr), ref)
    torch.testing.assert_close(build_transforms(20, 12, is_train=False)(arr.float() / 255), ref, atol=2e-2, rtol=0)


def test_masks_of_another_size_are_brought_to_the_image():
    m = torch.zeros(2, H // 2, W // 2, dtype=torch.bool)
    m[0, :5] = True
    _, out = build_transforms(H, W, is_train=False)(coord_image(), m, "masks")
    assert out.shape == (2, H, W) and bool(out[0, :10].all()) and not bool(out[0, 10:].any())


def test_bad_input():
    im = coord_image()
    tf = build_transforms(H, W, is_train=False)
    with pytest.raises(ValueError, match=r"build_transforms: \(height, width\) must be a positive int"):
        build_transforms(0, 3)
    with pytest.raises(ValueError, match=r"flip_p must be a probability in \[0, 1\]"):
        build_transforms(flip_p=2)
    with pytest.raises(ValueError, match="pad must be an int >= 0"):
        build_transforms(pad=-1)
    with pytest.raises(ValueError, match="std > 0"):
        build_transforms(std=(1, 0, 1))
    with pytest.raises(ValueError, match="parts were given without their kind"):
        tf(im, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"kind: expected one of boxes, keypoints, masks, got 'points'"):
        tf(im, torch.zeros(2, 4), "points")
    with pytest.raises(ValueError, match=r"boxes must be \[P, 4\]"):
        tf(im, torch.zeros(2, 3), "boxes")
    with pytest.raises(ValueError, match=r"keypoints must be \[K, 3\]"):
        tf(im, torch.zeros(14, 2), "keypoints")
    with pytest.raises(ValueError, match=r"masks must be \[P, h, w\]"):
        tf(im, torch.zeros(H, W), "masks")
    with pytest.raises(ValueError, match=r"a tensor image must be \[C, H, W\]"):
        tf(torch.zeros(H, W))
    with pytest.raises(ValueError, match=r"RandomHorizontalFlip: p must be a probability"):
        T.RandomHorizontalFlip(-0.1)
