"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def tiny_reid_root(tmp_path_factory):
    """A tiny synthetic Market-1501-style folder (8 identities x 2 cameras x 2 images, 64x32),
    written once per test session: 4 training identities (16 images), 8 queries, 8 gallery images."""
    from partdist.data import SyntheticReID

    root = tmp_path_factory.mktemp("tiny-reid")
    SyntheticReID(str(root), num_ids=8, num_cams=2, imgs_per_id_cam=2, height=64, width=32, seed=3).generate()
    return str(root)
