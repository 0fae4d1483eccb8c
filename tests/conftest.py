"""Shared test configuration: the markers declared in pyproject.toml, and shared fixtures.

* ``@pytest.mark.cuda``: needs a CUDA device; skipped here when there is none (the one
  place that decides it, so the CUDA build run with ``make cuda-check`` on a GPU machine
  runs exactly these).
* ``@pytest.mark.slow``: the long tests (multi-process and fresh-interpreter runs, training
  runs and the engines' trainers, thread checks, big hypothesis sweeps, torch.compile, the
  larger gradcheck / opcheck cases, the memory checks, the torchvision architectures larger
  than resnet18, most warp-kernel emulation cases, three of the search's four feature sources);
  ``make test-fast`` deselects them, ``make test`` runs all.
"""

import os
import sys

# Idle OpenMP workers sleep instead of spinning (a user's own setting is kept). Set before torch
# loads its OpenMP runtime. The thread count is unchanged, so parallel kernels still run on every
# core; what goes is the busy-wait after each parallel region, a third of the tests' CPU time in
# `make test-fast` on this 2-core machine (118 s spinning, 80 s sleeping); on a loaded machine it
# made a 0.1 s op take seconds (the spinning worker competing with the thread that has the work).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The test modules (rewritten by pytest for its assertion messages) and the package's modules are
# compiled once and cached in __pycache__ (git-ignored) even where PYTHONDONTWRITEBYTECODE is set:
# every pytest-xdist worker collects every test file, and compiling them all again costs each
# worker about 5 s of CPU per run (half its collection time).
sys.dont_write_bytecode = False

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # torch is imported here, not at the top: pytest-xdist's controller loads this file
    # but collects nothing, and would otherwise spend seconds importing torch before it
    # starts its workers
    import torch

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
