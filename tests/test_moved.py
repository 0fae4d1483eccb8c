"""The module paths that moved keep working for one release: importing an old path warns
(naming the new one) and gives the new module's names; the public names did not move."""

import importlib
import subprocess
import sys
import types
import warnings

import pytest

import partdist
import partdist.models
from partdist._moved import MOVED

# old path -> names users imported from it (public and the module-level ones tests used)
NAMES = {
    "partdist._ops": ["local_dist_matrix", "dmli", "dmli_path", "batch_local_dist", "local_dist", "unaligned_dist",
                      "MAX_STRIPES"],
    "partdist.mining": ["hard_example_mining", "triplet_hard_loss", "pair_loss", "HardMining"],
    "partdist.neighborhood": ["neighborhood_diff", "cross_neighborhood_diff", "tiled_to_blocks"],
    "partdist.part_dist": ["part_dist", "dsr_dist", "MAX_DSR_CELLS"],
    "partdist.parts": ["part_pool", "keypoints_to_parts", "bilinear_pool", "KEYPOINT_NAMES", "PART_SCHEMES"],
    "partdist.models.parts": ["GLAD", "SpindleNet", "SPReID"],
}


def _forget(name):
    """Drop the old module (and the parent's attribute) so that the next import runs the hook again."""
    sys.modules.pop(name, None)
    parent, _, child = name.rpartition(".")
    if isinstance(vars(sys.modules[parent]).get(child), types.ModuleType):
        delattr(sys.modules[parent], child)


def test_every_moved_path_is_tested():
    assert set(NAMES) == set(MOVED)


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_warns_and_reexports(old):
    new = importlib.import_module(MOVED[old])
    _forget(old)
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to {MOVED[old]}"):
        mod = importlib.import_module(old)
    for name in NAMES[old]:
        assert getattr(mod, name) is getattr(new, name), name
    assert getattr(mod, "__all__", None) == getattr(new, "__all__", None)
    # a name the shim did not copy (added to the new module later) is still found
    new._moved_probe = object()
    try:
        assert mod._moved_probe is new._moved_probe
    finally:
        del new._moved_probe
    with pytest.raises(AttributeError):
        mod.no_such_name_here  # noqa: B018


def test_old_path_part_dist_keeps_the_function():
    # partdist.part_dist is both an old module path and a public function: the function stays
    _forget("partdist.part_dist")
    with pytest.warns(DeprecationWarning, match="partdist.ops.parts"):
        from partdist.part_dist import part_dist
    assert part_dist is partdist.part_dist is partdist.ops.parts.part_dist
    assert callable(partdist.part_dist) and not isinstance(partdist.part_dist, types.ModuleType)


def test_from_import_statement_warns_at_the_import():
    _forget("partdist.mining")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from partdist.mining import hard_example_mining  # noqa: F401
    dep = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(dep) == 1 and "partdist.ops.mining" in str(dep[0].message)
    assert dep[0].filename == __file__  # points at the import statement, not at importlib


def test_old_attribute_access_warns():
    _forget("partdist.parts")
    with pytest.warns(DeprecationWarning, match="partdist.pooling"):
        mod = partdist.parts
    assert mod.part_pool is partdist.part_pool
    _forget("partdist.models.parts")
    with pytest.warns(DeprecationWarning, match="partdist.models.part_heads"):
        assert partdist.models.parts.GLAD is partdist.models.GLAD
    with pytest.raises(AttributeError):
        partdist.no_such_module  # noqa: B018


def test_public_names_unchanged():
    expected = {
        "MAX_DSR_CELLS", "MAX_STRIPES", "batch_local_dist", "bilinear_pool", "cross_neighborhood_diff", "dmli",
        "dmli_path", "dsr_dist", "hard_example_mining", "keypoints_to_parts", "local_dist", "local_dist_matrix",
        "local_dist_topk", "neighborhood_diff", "part_pool", "part_dist", "triplet_hard_loss", "unaligned_dist",
    }
    added = {"FeatureExtractor", "losses"}  # new public names (features of image files; partdist.losses)
    assert set(partdist.__all__) == expected | added
    for name in expected | added:
        assert getattr(partdist, name) is not None


def test_import_partdist_warns_nothing_and_has_no_cycle():
    # a fresh interpreter: importing the package (and eval first) raises no warning and no ImportError
    code = (
        "import warnings; warnings.simplefilter('error');"
        "import partdist.eval.streaming, partdist, partdist.compat, partdist.models, partdist.reference;"
        "assert partdist.local_dist_topk is partdist.eval.streaming.local_dist_topk"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reference_names_and_alias():
    import partdist.reference as R

    assert len(R.__all__) == len(set(R.__all__))
    for name in R.__all__:
        assert callable(getattr(R, name)), name
    assert R.dmli_seed is R.dmli_loop
    from partdist.ops.parts import lasso_fista

    assert R.lasso_fista is lasso_fista
