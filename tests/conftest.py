"""Shared test configuration: the markers declared in pyproject.toml, and shared fixtures.

* ``@pytest.mark.cuda``: needs a CUDA device; skipped here when there is none (the one
  place that decides it, so the CUDA build run with ``make cuda-check`` on a GPU machine
  runs exactly these).
* ``@pytest.mark.slow``: the long tests (multi-process, training runs, thread checks, big
  hypothesis sweeps, torch.compile, the larger gradcheck / opcheck cases, the memory check's
  planted-leak self-tests but one); ``make test-fast`` deselects them, ``make test`` runs all.
"""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_reid_root(tmp_path_factory):
    """A tiny synthetic Market-1501-style folder (8 identities x 2 cameras x 2 images, 64x32),
    written once per test session: 4 training identities (16 images), 8 queries, 8 gallery images."""
    from partdist.data import SyntheticReID

    root = tmp_path_factory.mktemp("tiny-reid")
    SyntheticReID(str(root), num_ids=8, num_cams=2, imgs_per_id_cam=2, height=64, width=32, seed=3).generate()
    return str(root)
