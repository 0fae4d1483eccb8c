"""Parsers for the standard person re-identification folder layouts.

Every parser takes a root path and returns a :class:`ReIDSplits` (a named tuple
``(train, query, gallery)``) of lists of ``(path, pid, camid)`` items:

* ``path``: absolute path of the image file;
* ``pid``: the identity. Train identities are relabeled to ``0 .. P-1`` (in increasing
  order of the original ids); query and gallery keep the dataset's own ids so that
  query and gallery ids can be compared;
* ``camid``: the camera, 0-based (``c1`` in a file name is camid 0).

Items are sorted by path, so the result does not depend on the file system's order.

Conventions (those of the benchmarks' evaluation code, as torchreid and AlignedReID
have them):

* **Market-1501 / DukeMTMC-reID / CUHK03-np**: images are named
  ``{pid}_c{cam}...`` (``0002_c1s1_000451_03.jpg``, ``0001_c2_f0046182.jpg``,
  ``0001_c1_1.png``). ``pid == -1`` marks *junk* images (bad detections); they are
  dropped from every split. ``pid == 0`` marks *distractors* (Market-1501): they are
  kept in query/gallery as identities that match nothing, and dropped from train
  (the benchmark's training set has none; a distractor class would be meaningless).
  (The other half of the benchmark's "junk" rule, gallery images of the query's
  identity taken by the query's camera, is applied by the evaluation, not here.)
* **MSMT17**: list files ``list_{train,val,query,gallery}.txt`` with lines
  ``relative/path.jpg pid``; the camera is the third ``_``-separated field of the
  file name (``0000_000_01_0303morning_0015_0.jpg`` is camera 1, camid 0).

A root that is missing or malformed raises :class:`FileNotFoundError` (missing
folders or files) or :class:`ValueError` (unexpected file names, malformed lines,
empty splits) naming what was expected.
"""

from __future__ import annotations

import os
import re
from typing import List, NamedTuple, Sequence, Tuple

__all__ = [
    "Item",
    "ReIDSplits",
    "parse_image_folder",
    "market_layout",
    "market1501",
    "dukemtmc_reid",
    "cuhk03_np",
    "msmt17",
    "load_dataset",
    "DATASETS",
]

Item = Tuple[str, int, int]

_NAME_RE = re.compile(r"^(-?\d+)_c(\d+)")
_MARKET_DIRS = ("bounding_box_train", "query", "bounding_box_test")


class ReIDSplits(NamedTuple):
    """``(train, query, gallery)`` lists of ``(path, pid, camid)``."""

    train: List[Item]
    query: List[Item]
    gallery: List[Item]

    @property
    def num_train_pids(self) -> int:
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({cam for _, _, cam in self.train})

    def summary(self) -> str:
        """One line per split: number of identities, images and cameras."""
        lines = []
        for name, items in (("train", self.train), ("query", self.query), ("gallery", self.gallery)):
            pids = {p for _, p, _ in items}
            cams = {c for _, _, c in items}
            lines.append(f"{name:8s} {len(pids):6d} ids {len(items):7d} images {len(cams):3d} cameras")
        return "\n".join(lines)


def _check_root(fn, root):
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"{fn}: root must be a path (str or os.PathLike), got {type(root).__name__}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(root):
        raise FileNotFoundError(f"{fn}: dataset root {root!r} does not exist")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{fn}: dataset root {root!r} is not a directory")
    return root


def _relabel(items: Sequence[Item]) -> List[Item]:
    pid2label = {pid: label for label, pid in enumerate(sorted({p for _, p, _ in items}))}
    return [(path, pid2label[pid], cam) for path, pid, cam in items]


def parse_image_folder(
    dir_path,
    relabel: bool = False,
    extensions: Sequence[str] = (".jpg",),
    keep_distractors: bool = True,
    max_cams: int | None = None,
) -> List[Item]:
    """Parse one folder of ``{pid}_c{cam}*`` images into ``(path, pid, camid)`` items.

    Args:
        dir_path: the folder (not searched recursively).
        relabel: map the pids to ``0 .. P-1`` (in increasing order of pid).
        extensions: image file extensions to read (case-insensitive); other files are
            ignored.
        keep_distractors: keep ``pid == 0`` images (junk ``pid == -1`` images are
            always dropped).
        max_cams: if given, camera numbers must be in ``1 .. max_cams``.

    Raises:
        FileNotFoundError: ``dir_path`` is not a folder.
        ValueError: a file name does not follow ``{pid}_c{cam}...``, a camera number is
            out of range, or the folder holds no image with one of ``extensions``.
    """
    fn = "parse_image_folder"
    dir_path = os.path.abspath(os.fspath(dir_path))
    if not os.path.isdir(dir_path):
        raise FileNotFoundError(f"{fn}: expected an image folder at {dir_path!r}, it does not exist")
    exts = tuple(e.lower() for e in extensions)
    names = sorted(n for n in os.listdir(dir_path) if n.lower().endswith(exts))
    if not names:
        raise ValueError(f"{fn}: folder {dir_path!r} holds no image ({', '.join('*' + e for e in exts)})")
    items = []
    for name in names:
        m = _NAME_RE.match(name)
        if m is None:
            raise ValueError(
                f"{fn}: unexpected file name {name!r} in {dir_path!r}: expected '{{pid}}_c{{camera}}...' "
                f"(for example '0002_c1s1_000451_03.jpg')"
            )
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid < -1:
            raise ValueError(f"{fn}: file {name!r} in {dir_path!r} has pid {pid}; expected -1 (junk), 0 or more")
        if cam < 1 or (max_cams is not None and cam > max_cams):
            rng = f"1..{max_cams}" if max_cams is not None else ">= 1"
            raise ValueError(f"{fn}: file {name!r} in {dir_path!r} has camera c{cam}; expected camera {rng}")
        if pid == -1 or (pid == 0 and not keep_distractors):
            continue
        items.append((os.path.join(dir_path, name), pid, cam - 1))
    return _relabel(items) if relabel else items


def _find_layout(fn, root, subdirs, candidates, what):
    """The first of ``root/c`` (c in candidates) holding all ``subdirs``, else a clear error."""
    for c in candidates:
        base = os.path.join(root, c) if c else root
        if all(os.path.isdir(os.path.join(base, d)) for d in subdirs):
            return base
    tried = [os.path.join(root, c) if c else root for c in candidates]
    base = root
    for t in tried:  # report the missing folders of the most plausible candidate
        if os.path.isdir(t):
            base = t
            break
    missing = [d for d in subdirs if not os.path.isdir(os.path.join(base, d))]
    raise FileNotFoundError(
        f"{fn}: {root!r} is not a {what} root: expected the folders {', '.join(repr(d) for d in subdirs)} "
        f"in one of {', '.join(repr(t) for t in tried)}; {base!r} lacks {', '.join(repr(m) for m in missing)}"
    )


def market_layout(root, extensions=(".jpg",), max_cams=None, name="market_layout", candidates=("",)) -> ReIDSplits:
    """Parse a Market-1501-style tree ``bounding_box_train/``, ``query/``, ``bounding_box_test/``.

    This is what :func:`market1501`, :func:`dukemtmc_reid`, :func:`cuhk03_np` and the
    output of :class:`partdist.data.SyntheticReID` share.
    """
    root = _check_root(name, root)
    base = _find_layout(name, root, _MARKET_DIRS, candidates, "Market-1501-style")
    train_dir, query_dir, gallery_dir = (os.path.join(base, d) for d in _MARKET_DIRS)
    train = parse_image_folder(train_dir, relabel=True, extensions=extensions, keep_distractors=False, max_cams=max_cams)
    query = parse_image_folder(query_dir, extensions=extensions, max_cams=max_cams)
    gallery = parse_image_folder(gallery_dir, extensions=extensions, max_cams=max_cams)
    for split, items, d in (("train", train, train_dir), ("query", query, query_dir), ("gallery", gallery, gallery_dir)):
        if not items:
            raise ValueError(f"{name}: the {split} folder {d!r} holds only junk/distractor images")
    return ReIDSplits(train, query, gallery)


def market1501(root) -> ReIDSplits:
    """Market-1501 (Zheng et al., ICCV 2015): 751 train ids, 3,368 queries, 15,913 gallery images.

    ``root`` is the folder holding ``bounding_box_train``, ``query`` and
    ``bounding_box_test``, or a parent holding it as ``Market-1501-v15.09.15``,
    ``market1501/Market-1501-v15.09.15`` or ``market1501``.
    """
    return market_layout(
        root,
        name="market1501",
        candidates=("", "Market-1501-v15.09.15", os.path.join("market1501", "Market-1501-v15.09.15"), "market1501"),
    )


def dukemtmc_reid(root) -> ReIDSplits:
    """DukeMTMC-reID: 702 train ids, 2,228 queries, 17,661 gallery images, 8 cameras.

    ``root`` is the folder holding ``bounding_box_train``, ``query`` and
    ``bounding_box_test``, or a parent holding it as ``DukeMTMC-reID`` or
    ``dukemtmc-reid/DukeMTMC-reID``.
    """
    return market_layout(
        root,
        name="dukemtmc_reid",
        max_cams=8,
        candidates=("", "DukeMTMC-reID", os.path.join("dukemtmc-reid", "DukeMTMC-reID")),
    )


def cuhk03_np(root, subset: str = "labeled") -> ReIDSplits:
    """CUHK03 in the new protocol (CUHK03-np, Zhong et al. 2017): 767 train / 700 test ids.

    ``root`` is the ``cuhk03-np`` folder (or its parent) holding ``labeled/`` and
    ``detected/``, each a Market-style tree of ``.png`` images; ``subset`` picks one.
    """
    if subset not in ("labeled", "detected"):
        raise ValueError(f"cuhk03_np: subset must be 'labeled' or 'detected', got {subset!r}")
    return market_layout(
        root,
        extensions=(".png", ".jpg"),
        name="cuhk03_np",
        candidates=(subset, os.path.join("cuhk03-np", subset), ""),
    )


def _read_list(fn, list_path, img_dir, check_files):
    items = []
    with open(list_path, "r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
                raise ValueError(
                    f"{fn}: {list_path}:{lineno}: expected '<relative image path> <pid>', got {line!r}"
                )
            rel, pid = parts[0], int(parts[1])
            fields = os.path.basename(rel).split("_")
            if len(fields) < 3 or not fields[2].isdigit() or int(fields[2]) < 1:
                raise ValueError(
                    f"{fn}: {list_path}:{lineno}: cannot read the camera of {rel!r}: expected a file name "
                    f"like '0000_000_01_0303morning_0015_0.jpg' (third field: camera number >= 1)"
                )
            items.append((os.path.join(img_dir, rel), pid, int(fields[2]) - 1))
    if not items:
        raise ValueError(f"{fn}: list file {list_path!r} is empty")
    if check_files:
        missing = [p for p, _, _ in items if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{fn}: {len(missing)} image(s) listed in {list_path!r} do not exist, e.g. {missing[0]!r}"
            )
    return items


_MSMT_VERSIONS = (("MSMT17_V1", "train", "test"), ("MSMT17_V2", "mask_train_v2", "mask_test_v2"))


def msmt17(root, include_val: bool = False, check_files: bool = True) -> ReIDSplits:
    """MSMT17 (Wei et al., CVPR 2018): 1,041 train ids, 11,659 queries, 82,161 gallery images.

    ``root`` is the ``MSMT17_V1`` (``train/``, ``test/``) or ``MSMT17_V2``
    (``mask_train_v2/``, ``mask_test_v2/``) folder, or a parent holding one of them
    (directly or under ``msmt17/``), with ``list_train.txt``, ``list_val.txt``,
    ``list_query.txt`` and ``list_gallery.txt``. ``include_val`` adds the validation
    list to train (torchreid's ``combineall``; not the standard protocol).
    ``check_files`` verifies that every listed image exists.
    """
    fn = "msmt17"
    root = _check_root(fn, root)
    tried = []
    for base in (root, os.path.join(root, "msmt17")):
        for version, train_name, test_name in _MSMT_VERSIONS:
            for d in ((base,) if os.path.basename(base) == version else ()) + (os.path.join(base, version),):
                tried.append(d)
                if os.path.isdir(os.path.join(d, train_name)) and os.path.isdir(os.path.join(d, test_name)):
                    lists = ["list_train.txt", "list_query.txt", "list_gallery.txt"] + (
                        ["list_val.txt"] if include_val else []
                    )
                    missing = [n for n in lists if not os.path.isfile(os.path.join(d, n))]
                    if missing:
                        raise FileNotFoundError(f"{fn}: {d!r} lacks the list file(s) {', '.join(missing)}")
                    train_dir, test_dir = os.path.join(d, train_name), os.path.join(d, test_name)
                    train = _read_list(fn, os.path.join(d, "list_train.txt"), train_dir, check_files)
                    if include_val:
                        train += _read_list(fn, os.path.join(d, "list_val.txt"), train_dir, check_files)
                    query = _read_list(fn, os.path.join(d, "list_query.txt"), test_dir, check_files)
                    gallery = _read_list(fn, os.path.join(d, "list_gallery.txt"), test_dir, check_files)
                    key = lambda it: it[0]  # noqa: E731
                    return ReIDSplits(_relabel(sorted(train, key=key)), sorted(query, key=key), sorted(gallery, key=key))
    raise FileNotFoundError(
        f"{fn}: {root!r} is not an MSMT17 root: expected 'MSMT17_V1' (with 'train/' and 'test/') or "
        f"'MSMT17_V2' (with 'mask_train_v2/' and 'mask_test_v2/'); looked in "
        + ", ".join(repr(t) for t in dict.fromkeys(tried))
    )


#: name -> parser; ``load_dataset(name, root, **kwargs)`` dispatches on it.
DATASETS = {
    "market1501": market1501,
    "dukemtmc_reid": dukemtmc_reid,
    "cuhk03_np": cuhk03_np,
    "msmt17": msmt17,
    "market_layout": market_layout,
}


def load_dataset(name: str, root, **kwargs) -> ReIDSplits:
    """Parse dataset ``name`` (a key of :data:`DATASETS`, e.g. ``"market1501"``) under ``root``."""
    if name not in DATASETS:
        raise ValueError(f"load_dataset: unknown dataset name {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](root, **kwargs)
