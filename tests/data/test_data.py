"""partdist.data: parsers (on tiny fake trees), SyntheticReID, sampler, ImageDataset (transforms:
test_transforms.py)."""

import dataclasses
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from partdist.data import (
    CameraParams,
    ImageDataset,
    RandomIdentitySampler,
    SyntheticReID,
    build_transforms,
    cuhk03_np,
    default_camera_params,
    dukemtmc_reid,
    load_dataset,
    make_grid,
    market1501,
    msmt17,
    parse_image_folder,
)


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


# ---------------------------------------------------------------------------------------
# Market-1501 style parsers
# ---------------------------------------------------------------------------------------

MARKET_FILES = {
    "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s3_000001_01.jpg",
                           "1500_c6s4_000001_01.jpg", "Thumbs.db"],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c4s1_000001_00.jpg"],
    "bounding_box_test": ["0001_c2s1_000301_01.jpg", "0003_c5s2_000001_02.jpg", "0000_c1s1_000001_01.jpg",
                          "-1_c1s1_000002_03.jpg", "-1_c3s1_000003_01.jpg"],
}


def make_market(root, files=MARKET_FILES, sub=""):
    base = os.path.join(str(root), sub)
    for d, names in files.items():
        os.makedirs(os.path.join(base, d), exist_ok=True)
        for n in names:
            touch(os.path.join(base, d, n))
    return base


@pytest.mark.parametrize("sub", ["", "Market-1501-v15.09.15", os.path.join("market1501", "Market-1501-v15.09.15")])
def test_market1501_parser(tmp_path, sub):
    base = make_market(tmp_path, sub=sub)
    train, query, gallery = market1501(tmp_path)
    # train: relabeled 0..P-1 in increasing pid order, camids 0-based, sorted by path
    assert [(os.path.basename(p), pid, cam) for p, pid, cam in train] == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c2s1_000551_01.jpg", 0, 1),
        ("0007_c3s3_000001_01.jpg", 1, 2),
        ("1500_c6s4_000001_01.jpg", 2, 5),
    ]
    assert all(p.startswith(os.path.join(base, "bounding_box_train")) and os.path.isabs(p) for p, _, _ in train)
    # query/gallery keep the original ids; junk (-1) dropped, distractors (0) kept
    assert sorted((pid, cam) for _, pid, cam in query) == [(1, 0), (3, 3)]
    assert sorted((pid, cam) for _, pid, cam in gallery) == [(0, 0), (1, 1), (3, 4)]
    splits = market1501(tmp_path)
    assert splits.num_train_pids == 3 and splits.num_train_cams == 4
    assert "train" in splits.summary() and "gallery" in splits.summary()


def test_market_train_drops_junk_and_distractors(tmp_path):
    files = dict(MARKET_FILES)
    files["bounding_box_train"] = ["0000_c1s1_000001_00.jpg", "-1_c1s1_000001_00.jpg", "0005_c1s1_000001_00.jpg"]
    make_market(tmp_path, files)
    train = market1501(tmp_path).train
    assert [(pid, cam) for _, pid, cam in train] == [(0, 0)]
    assert os.path.basename(train[0][0]) == "0005_c1s1_000001_00.jpg"


def test_dukemtmc_parser(tmp_path):
    files = {
        "bounding_box_train": ["0005_c2_f0046182.jpg", "0001_c8_f0000001.jpg"],
        "query": ["0010_c1_f0000002.jpg"],
        "bounding_box_test": ["0010_c5_f0000003.jpg", "0011_c7_f0000004.jpg"],
    }
    make_market(tmp_path, files, sub="DukeMTMC-reID")
    train, query, gallery = dukemtmc_reid(tmp_path)
    assert [(pid, cam) for _, pid, cam in train] == [(0, 7), (1, 1)]
    assert [(pid, cam) for _, pid, cam in query] == [(10, 0)]
    assert [(pid, cam) for _, pid, cam in gallery] == [(10, 4), (11, 6)]
    touch(os.path.join(str(tmp_path), "DukeMTMC-reID", "query", "0012_c9_f0000001.jpg"))
    with pytest.raises(ValueError, match=r"'0012_c9_f0000001.jpg'.*camera c9; expected camera 1..8"):
        dukemtmc_reid(tmp_path)


@pytest.mark.parametrize("subset", ["labeled", "detected"])
def test_cuhk03_np_parser(tmp_path, subset):
    for s in ("labeled", "detected"):
        files = {
            "bounding_box_train": ["0001_c1_1.png", "0001_c2_6.png", "0004_c1_2.png"],
            "query": ["0100_c1_1.png"] if s == subset else ["0200_c1_1.png"],
            "bounding_box_test": ["0100_c2_7.png"],
        }
        make_market(tmp_path, files, sub=os.path.join("cuhk03-np", s))
    train, query, gallery = cuhk03_np(tmp_path, subset=subset)
    assert [(pid, cam) for _, pid, cam in train] == [(0, 0), (0, 1), (1, 0)]
    assert [(pid, cam) for _, pid, cam in query] == [(100, 0)]
    assert f"{os.sep}{subset}{os.sep}" in query[0][0]
    # the cuhk03-np folder itself as root
    assert cuhk03_np(os.path.join(str(tmp_path), "cuhk03-np"), subset=subset).query == query
    with pytest.raises(ValueError, match="subset must be 'labeled' or 'detected', got 'both'"):
        cuhk03_np(tmp_path, subset="both")


def test_parsers_missing_root(tmp_path):
    missing = os.path.join(str(tmp_path), "nope")
    for fn in (market1501, dukemtmc_reid, cuhk03_np, msmt17):
        with pytest.raises(FileNotFoundError, match=r"dataset root '.*nope' does not exist"):
            fn(missing)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        market1501(f)
    with pytest.raises(TypeError, match="root must be a path"):
        market1501(3)


def test_market_malformed_tree(tmp_path):
    files = dict(MARKET_FILES)
    del files["query"]
    make_market(tmp_path, files)
    with pytest.raises(FileNotFoundError, match=r"expected the folders 'bounding_box_train', 'query', "
                       r"'bounding_box_test'.*lacks 'query'"):
        market1501(tmp_path)


def test_market_bad_file_name(tmp_path):
    make_market(tmp_path)
    touch(os.path.join(str(tmp_path), "query", "person_01.jpg"))
    with pytest.raises(ValueError, match=r"unexpected file name 'person_01.jpg' in '.*query'.*'\{pid\}_c\{camera\}"):
        market1501(tmp_path)


def test_market_empty_and_junk_only_folders(tmp_path):
    files = dict(MARKET_FILES)
    files["query"] = []
    make_market(tmp_path, files)
    with pytest.raises(ValueError, match=r"folder '.*query' holds no image \(\*\.jpg\)"):
        market1501(tmp_path)
    touch(os.path.join(str(tmp_path), "query", "-1_c1s1_000001_00.jpg"))
    with pytest.raises(ValueError, match="query folder .* holds only junk/distractor images"):
        market1501(tmp_path)


def test_parse_image_folder_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected an image folder at"):
        parse_image_folder(tmp_path / "missing")
    touch(str(tmp_path / "d" / "-2_c1_x.jpg"))
    with pytest.raises(ValueError, match="has pid -2; expected -1"):
        parse_image_folder(tmp_path / "d")
    os.remove(str(tmp_path / "d" / "-2_c1_x.jpg"))
    touch(str(tmp_path / "d" / "0003_c0_x.jpg"))
    with pytest.raises(ValueError, match="camera c0; expected camera >= 1"):
        parse_image_folder(tmp_path / "d")


def make_msmt(root, version="MSMT17_V1", train_dir="train", test_dir="test", lines=None):
    base = os.path.join(str(root), version)
    lists = lines or {
        "list_train.txt": ["0005/0005_000_01_0303morning_0015_0.jpg 5", "0002/0002_011_15_0303noon_0001_1.jpg 2"],
        "list_val.txt": ["0009/0009_001_03_0303morning_0001_0.jpg 9"],
        "list_query.txt": ["0000/0000_000_02_0303morning_0001_0.jpg 0"],
        "list_gallery.txt": ["0000/0000_001_04_0303morning_0002_0.jpg 0", "0001/0001_000_12_0303noon_0003_0.jpg 1"],
    }
    for name, ls in lists.items():
        sub = train_dir if name in ("list_train.txt", "list_val.txt") else test_dir
        for line in ls:
            touch(os.path.join(base, sub, line.split()[0]))
        os.makedirs(base, exist_ok=True)
        with open(os.path.join(base, name), "w") as f:
            f.write("\n".join(ls) + "\n")
    os.makedirs(os.path.join(base, train_dir), exist_ok=True)
    os.makedirs(os.path.join(base, test_dir), exist_ok=True)
    return base


@pytest.mark.parametrize("version,train_dir,test_dir", [("MSMT17_V1", "train", "test"),
                                                         ("MSMT17_V2", "mask_train_v2", "mask_test_v2")])
def test_msmt17_parser(tmp_path, version, train_dir, test_dir):
    base = make_msmt(tmp_path, version, train_dir, test_dir)
    for root in (tmp_path, base):
        train, query, gallery = msmt17(root)
        assert [(pid, cam) for _, pid, cam in train] == [(0, 14), (1, 0)]  # sorted by path, relabeled
        assert train[0][0] == os.path.join(base, train_dir, "0002", "0002_011_15_0303noon_0001_1.jpg")
        assert [(pid, cam) for _, pid, cam in query] == [(0, 1)]
        assert [(pid, cam) for _, pid, cam in gallery] == [(0, 3), (1, 11)]
    train = msmt17(tmp_path, include_val=True).train
    assert [(pid, cam) for _, pid, cam in train] == [(0, 14), (1, 0), (2, 2)]


def test_msmt17_malformed(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an MSMT17 root: expected 'MSMT17_V1'"):
        msmt17(tmp_path)
    base = make_msmt(tmp_path)
    os.remove(os.path.join(base, "list_query.txt"))
    with pytest.raises(FileNotFoundError, match="lacks the list file\\(s\\) list_query.txt"):
        msmt17(tmp_path)
    with open(os.path.join(base, "list_query.txt"), "w") as f:
        f.write("0000/0000_000_02_0303morning_0001_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query.txt:1: expected '<relative image path> <pid>'"):
        msmt17(tmp_path)
    with open(os.path.join(base, "list_query.txt"), "w") as f:
        f.write("0000/0000_000_02_0303morning_0001_0.jpg 0\n0000/bad.jpg 0\n")
    with pytest.raises(ValueError, match=r"list_query.txt:2: cannot read the camera of '0000/bad.jpg'"):
        msmt17(tmp_path)
    with open(os.path.join(base, "list_query.txt"), "w") as f:
        f.write("0000/0000_000_02_0303morning_9999_0.jpg 0\n")
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) listed in .*list_query.txt.* do not exist"):
        msmt17(tmp_path)
    assert len(msmt17(tmp_path, check_files=False).query) == 1
    with open(os.path.join(base, "list_query.txt"), "w") as f:
        f.write("\n")
    with pytest.raises(ValueError, match="list_query.txt' is empty"):
        msmt17(tmp_path)


def test_load_dataset(tmp_path):
    make_market(tmp_path)
    assert load_dataset("market1501", tmp_path) == market1501(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset name 'market'; expected one of"):
        load_dataset("market", tmp_path)


# ---------------------------------------------------------------------------------------
# SyntheticReID
# ---------------------------------------------------------------------------------------

SMALL = dict(num_ids=8, num_cams=3, imgs_per_id_cam=2, height=64, width=32, seed=1, num_distractors=2, num_junk=2)


@pytest.fixture(scope="module")
def small_synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return SyntheticReID(root, **SMALL).generate()


def test_synthetic_layout_read_by_market_parser(small_synth):
    train, query, gallery = market1501(small_synth)
    assert len(train) == 4 * 3 * 2 and {pid for _, pid, _ in train} == set(range(4))
    assert len(query) == 4 * 3 and len(gallery) == 4 * 3 + 2  # + distractors; junk dropped
    assert {pid for _, pid, _ in query} == {5, 6, 7, 8}
    assert sum(pid == 0 for _, pid, _ in gallery) == 2
    # every query has a gallery image of its identity in another camera
    for _, pid, cam in query:
        assert any(p == pid and c != cam for _, p, c in gallery)
    names = os.listdir(os.path.join(small_synth, "bounding_box_test"))
    assert sum(n.startswith("-1_c") for n in names) == 2
    with Image.open(train[0][0]) as im:
        assert im.size == (32, 64) and im.mode == "RGB"


def test_synthetic_deterministic(small_synth, tmp_path):
    again = SyntheticReID(tmp_path / "b", **SMALL).generate()
    for d in ("bounding_box_train", "query", "bounding_box_test"):
        names = sorted(os.listdir(os.path.join(small_synth, d)))
        assert names == sorted(os.listdir(os.path.join(again, d)))
        for n in names:
            with open(os.path.join(small_synth, d, n), "rb") as f1, open(os.path.join(again, d, n), "rb") as f2:
                assert f1.read() == f2.read(), n
    other = SyntheticReID(tmp_path / "c", **dict(SMALL, seed=2))
    assert not np.array_equal(other.render(1, 0, 0), SyntheticReID(tmp_path / "b", **SMALL).render(1, 0, 0))


def test_synthetic_identities_differ_and_repeat():
    ds = SyntheticReID("/nonexistent-unused", **dict(SMALL, height=128, width=64))
    assert np.array_equal(ds.identity(3)["shirt"], ds.identity(3)["shirt"])  # a function of (seed, pid)
    assert len({tuple(ds.identity(p)["shirt"]) for p in range(1, 9)}) == 8

    def torso_colour(pid, idx):
        im, info = ds._render(pid, 0, idx, CameraParams(occlusion_prob=0.0))
        top, h, cx = info["top"], info["height"], info["cx"]
        rows = slice(int(top + 0.25 * h), int(top + 0.45 * h))
        cols = slice(int(cx - 0.05 * h), int(cx + 0.05 * h))
        return im[rows, cols].reshape(-1, 3).astype(float).mean(0)

    # the same identity seen twice is closer than two identities, in nearly all cases
    pids = range(1, 9)
    c0 = {p: torso_colour(p, 0) for p in pids}
    c1 = {p: torso_colour(p, 1) for p in pids}
    wins = sum(
        np.abs(c0[p] - c1[p]).sum() < min(np.abs(c0[p] - c1[o]).sum() for o in pids if o != p) for p in pids
    )
    assert wins >= 7


def _figure_rows(ds, pid, cam, camera):
    """Rows where two identities rendered with the same random streams differ (= the figure)."""
    im1, info = ds._render(pid, cam, 0, camera)
    im2, _ = ds._render(pid, cam, 0, camera, ident=ds.identity(pid + 1))
    rows = np.nonzero((im1 != im2).any(axis=(1, 2)))[0]
    return rows, info


def test_synthetic_camera_shift_and_scale():
    ds = SyntheticReID("/nonexistent-unused", **dict(SMALL, height=128, width=64))
    base = CameraParams(shift_jitter=0.0, scale_jitter=0.0)
    rows0, info0 = _figure_rows(ds, 1, 0, base)
    rows1, info1 = _figure_rows(ds, 1, 0, dataclasses.replace(base, shift_y=0.15))
    assert info1["top"] - info0["top"] == pytest.approx(0.15 * 128)
    # the figure occupies the rows the geometry says
    for rows, info in ((rows0, info0), (rows1, info1)):
        assert rows.min() >= np.floor(info["top"]) - 1
        assert rows.max() <= min(127, np.ceil(info["top"] + info["height"]) + 1)
        assert rows.min() <= info["top"] + 0.2 * info["height"]  # the head is there
    assert rows1.min() > rows0.min() + 10
    _, info_s = _figure_rows(ds, 1, 0, dataclasses.replace(base, scale=0.6))
    assert info_s["height"] == pytest.approx(0.6 * info0["height"])


def test_synthetic_occlusion_covers_the_given_side():
    ds = SyntheticReID("/nonexistent-unused", **dict(SMALL, height=128, width=64))
    clear = CameraParams(shift_jitter=0.0, scale_jitter=0.0)
    occ = dataclasses.replace(clear, occlusion_prob=1.0, occlusion_frac=(0.4, 0.4), occlusion_side="bottom")
    im0, info0 = ds._render(1, 0, 0, clear)
    im1, info1 = ds._render(1, 0, 0, occ)
    assert not info0["occluded"] and info1["occluded"] and info1["occlusion_frac"] == pytest.approx(0.4)
    rows = np.nonzero((im0 != im1).any(axis=(1, 2)))[0]
    start = info1["top"] + 0.6 * info1["height"]
    assert rows.min() >= np.floor(start) - 1 and rows.max() == 127
    # the occluder is a box of one colour (up to stripes and noise): low variance
    assert im1[int(start) + 2 :, :].std(axis=(0, 1)).max() < im0[int(start) + 2 :, :].std(axis=(0, 1)).max()


def test_default_camera_params():
    cams = default_camera_params(6)
    assert len(cams) == 6 and cams[0] == CameraParams()
    assert cams[1].shift_y > 0 and cams[2].scale < 1 and cams[3].occlusion_prob > 0
    for c in cams:
        c.validate()
    assert len({dataclasses.astuple(c) for c in cams}) == 6
    with pytest.raises(ValueError, match="num_cams must be a positive int"):
        default_camera_params(0)


def test_synthetic_regenerate_and_existing_root(small_synth, tmp_path):
    ds = SyntheticReID(small_synth, **SMALL)
    before = os.path.getmtime(os.path.join(small_synth, "synthetic_reid.json"))
    assert ds.generate() == small_synth  # up to date: nothing rewritten
    assert os.path.getmtime(os.path.join(small_synth, "synthetic_reid.json")) == before
    root = tmp_path / "busy"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    small = dict(SMALL, num_ids=3, num_cams=2, imgs_per_id_cam=1, num_distractors=0, num_junk=0)
    with pytest.raises(FileExistsError, match="is not empty and does not hold a data set generated with these"):
        SyntheticReID(root, **small).generate()
    SyntheticReID(root, **small).generate(overwrite=True)
    assert (root / "keep.txt").read_text() == "mine"  # only our folders are replaced
    train, query, gallery = market1501(root)
    # 1 train id, 2 test ids; imgs_per_id_cam=1: one camera of each test id is the query
    assert len(train) == 2 and len(query) == 2 and len(gallery) == 2
    (root / "synthetic_reid.json").unlink()
    with pytest.raises(FileExistsError):
        SyntheticReID(root, **small).generate()


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        ({"num_ids": 1}, ValueError, "num_ids must be an int >= 2, got 1"),
        ({"num_cams": 0}, ValueError, "num_cams must be an int >= 1"),
        ({"num_cams": 2.0}, TypeError, "num_cams must be an int"),
        ({"num_train_ids": 8}, ValueError, "num_train_ids must be < num_ids"),
        ({"num_cams": 1, "imgs_per_id_cam": 1}, ValueError, "num_cams \\* imgs_per_id_cam must be >= 2"),
        ({"camera_params": [CameraParams()]}, ValueError, "camera_params must hold num_cams = 3"),
        ({"camera_params": [CameraParams(), CameraParams(), "x"]}, TypeError, r"camera_params\[2\] must be a"),
        ({"camera_params": [CameraParams(shift_y=0.9)] * 3}, ValueError, r"camera_params\[0\]: shift_y must be in"),
        ({"camera_params": [CameraParams(occlusion_side="front")] * 3}, ValueError, "occlusion_side must be"),
        ({"camera_params": [CameraParams(occlusion_frac=(0.5, 0.2))] * 3}, ValueError, "occlusion_frac must be"),
        ({"image_format": "gif"}, ValueError, "image_format must be 'jpg' or 'png'"),
        ({"height": 4}, ValueError, "height must be an int >= 16"),
    ],
)
def test_synthetic_bad_arguments(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        SyntheticReID("/nonexistent-unused", **dict(SMALL, **kwargs))


def test_synthetic_png_and_root_is_file(tmp_path):
    root = SyntheticReID(tmp_path / "p", **dict(SMALL, num_ids=3, num_cams=2, num_distractors=0, num_junk=0,
                                                 image_format="png")).generate()
    assert all(n.endswith(".png") for n in os.listdir(os.path.join(root, "query")))
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        SyntheticReID(tmp_path / "f", **SMALL).generate()
    with pytest.raises(TypeError, match="root must be a path"):
        SyntheticReID(None, **SMALL)


def test_make_grid(small_synth):
    items = market1501(small_synth).train[:5]
    grid = make_grid(items, ncols=3, pad=2)
    assert grid.size == (3 * 34 + 2, 2 * 66 + 2)
    with pytest.raises(ValueError, match="images is empty"):
        make_grid([])


# ---------------------------------------------------------------------------------------
# RandomIdentitySampler
# ---------------------------------------------------------------------------------------


def fake_items(counts):
    items = []
    for pid, n in enumerate(counts):
        items += [(f"/x/{pid}_{i}.jpg", pid * 10 + 3, i % 3) for i in range(n)]
    return items


COUNTS = [1, 2, 4, 4, 5, 7, 9, 3, 12, 4]


def batches(sampler, bs):
    idx = list(sampler)
    assert len(idx) % bs == 0
    return [idx[s : s + bs] for s in range(0, len(idx), bs)]


@pytest.mark.parametrize("P,K", [(2, 4), (3, 2), (4, 1), (10, 4)])
def test_sampler_batches_are_p_by_k(P, K):
    items = fake_items(COUNTS)
    s = RandomIdentitySampler(items, batch_size=P * K, num_instances=K, seed=3)
    n = len(s)
    bs = batches(s, P * K)
    assert sum(map(len, bs)) == n > 0
    for b in bs:
        pids = Counter(items[i][1] for i in b)
        assert len(pids) == P and set(pids.values()) == {K}
        for k in range(P):  # identity groups are consecutive
            assert len({items[i][1] for i in b[k * K : (k + 1) * K]}) == 1
    # identities with >= K images: no image twice in an epoch; with < K: sampled with replacement
    all_idx = [i for b in bs for i in b]
    per_pid = {}
    for i in all_idx:
        per_pid.setdefault(items[i][1], []).append(i)
    for pid, idxs in per_pid.items():
        n_imgs = sum(1 for it in items if it[1] == pid)
        if n_imgs >= K:
            assert len(set(idxs)) == len(idxs)
        else:
            assert len(idxs) == K and len(set(idxs)) <= n_imgs


def test_sampler_matches_torchreid_epoch_size_when_all_used():
    # with P = 1 every group of every identity is emitted (torchreid's length estimate is exact)
    items = fake_items(COUNTS)
    K = 4
    s = RandomIdentitySampler(items, batch_size=K, num_instances=K)
    expect = sum(max(n, K) - max(n, K) % K for n in COUNTS)
    assert len(s) == len(list(s)) == expect


def test_sampler_deterministic_epochs_and_resume():
    items = fake_items(COUNTS)
    a = RandomIdentitySampler(items, 8, 4, seed=7)
    b = RandomIdentitySampler(items, 8, 4, seed=7)
    c = RandomIdentitySampler(items, 8, 4, seed=8)
    e0 = list(a)
    assert e0 == list(b) and e0 != list(c)
    assert a.epoch == 1  # advanced by the full pass
    e1 = list(a)
    assert e1 != e0
    # resume mid-epoch from a state dict
    r = RandomIdentitySampler(items, 8, 4, seed=7)
    it = iter(r)
    head = [next(it) for _ in range(8)]
    state = r.state_dict()
    assert state["epoch"] == 0 and state["position"] == 8
    fresh = RandomIdentitySampler(items, 8, 4, seed=0)
    fresh.load_state_dict(state)
    assert len(fresh) == len(e0) - 8
    assert head + list(fresh) == e0
    assert list(fresh) == e1
    # set_epoch, as DistributedSampler, with a start batch
    fresh.set_epoch(1, start_batch=1)
    assert list(fresh) == e1[8:]
    gen = torch.Generator().manual_seed(7)
    assert list(RandomIdentitySampler(items, 8, 4, seed=gen)) == e0


def test_sampler_with_dataloader():
    items = fake_items(COUNTS)
    ds = [(torch.tensor(i), pid) for i, (_, pid, _) in enumerate(items)]
    s = RandomIdentitySampler(items, batch_size=6, num_instances=3, seed=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=6, sampler=s, drop_last=True)
    n = len(loader)  # of the current epoch (epoch lengths vary, as in torchreid)
    got = [b[0].tolist() for b in loader]
    assert len(got) == n > 0
    assert s.epoch == 1
    s.set_epoch(0)
    assert [i for b in got for i in b] == list(s)


def test_sampler_accepts_image_dataset():
    items = fake_items(COUNTS)
    s = RandomIdentitySampler(ImageDataset(items), 8, 4)
    assert len(s) > 0


@pytest.mark.parametrize(
    "args,exc,msg",
    [
        ((fake_items(COUNTS), 10, 4), ValueError, r"batch_size \(10\) must be a multiple of num_instances \(4\)"),
        ((fake_items(COUNTS), 8, 0), ValueError, "num_instances must be an int >= 1, got 0"),
        ((fake_items(COUNTS), 0, 1), ValueError, "batch_size must be an int >= 1"),
        ((fake_items(COUNTS), 8.0, 4), TypeError, "batch_size must be an int"),
        ((fake_items([3, 3]), 12, 4), ValueError, "data_source has 2 identities, fewer than the 3 per batch"),
        ((5, 8, 4), TypeError, "data_source must be a sequence"),
        (([("a",)], 1, 1), TypeError, r"data_source\[0\] must be a \(path, pid, camid\) item"),
    ],
)
def test_sampler_bad_arguments(args, exc, msg):
    with pytest.raises(exc, match=msg):
        RandomIdentitySampler(*args)


def test_sampler_bad_state():
    s = RandomIdentitySampler(fake_items(COUNTS), 8, 4)
    with pytest.raises(ValueError, match="state must be a dict from state_dict"):
        s.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="state has num_instances=2, this sampler has 4"):
        s.load_state_dict(dict(s.state_dict(), num_instances=2))
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        s.set_epoch(-1)


# ---------------------------------------------------------------------------------------
# ImageDataset
# ---------------------------------------------------------------------------------------


def test_image_dataset(small_synth):
    train = market1501(small_synth).train
    ds = ImageDataset(train, transform=build_transforms(32, 16, is_train=True), seed=5)
    img, pid, cam = ds[3]
    assert img.shape == (3, 32, 16) and (pid, cam) == train[3][1:]
    assert torch.equal(ds[3][0], img)  # same (seed, epoch, index): same augmentation
    ds.set_epoch(1)
    assert not all(torch.equal(ds[i][0], ImageDataset(train, ds.transform, seed=5)[i][0]) for i in range(6))
    plain = ImageDataset(train)
    assert isinstance(plain[0][0], Image.Image)
    # a plain callable transform works too
    assert ImageDataset(train, transform=lambda im: im.size)[0][0] == (32, 64)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=8, sampler=RandomIdentitySampler(train, 8, 2, seed=0), num_workers=0)
    imgs, pids, cams = next(iter(loader))
    assert imgs.shape == (8, 3, 32, 16) and len(set(pids.tolist())) == 4


def test_image_dataset_errors(tmp_path):
    with pytest.raises(TypeError, match=r"data\[0\] must be a \(path, pid, camid\) item"):
        ImageDataset([("a", 1)])
    with pytest.raises(TypeError, match="transform must be callable"):
        ImageDataset([], transform=3)
    with pytest.raises(ValueError, match="seed must be an int >= 0 or None"):
        ImageDataset([], seed=-1)
    ds = ImageDataset([(str(tmp_path / "missing.jpg"), 1, 0)])
    with pytest.raises(FileNotFoundError, match="image file '.*missing.jpg' does not exist"):
        ds[0]
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read '.*bad.jpg' as an image"):
        ImageDataset([(str(tmp_path / "bad.jpg"), 1, 0)])[0]
