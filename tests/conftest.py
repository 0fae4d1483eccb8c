"""Shared test configuration: the markers declared in pyproject.toml.

* ``@pytest.mark.cuda``: needs a CUDA device; skipped here when there is none (the one
  place that decides it, so the CUDA build run with ``make cuda-check`` on a GPU machine
  runs exactly these).
* ``@pytest.mark.slow``: the long tests (multi-process, training runs, memory and thread
  checks, big hypothesis sweeps); ``make test-fast`` deselects them, ``make test`` runs all.
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
