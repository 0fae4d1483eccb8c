"""Module paths that moved, kept for one release: importing an old path warns and gives
the new module's names.

The old files are gone (so that ``git`` follows the moves); an import hook answers for
the old paths instead. ``import partdist.mining`` (or ``from partdist.mining import x``)
emits a :class:`DeprecationWarning` naming the new module and returns a module that
re-exports everything of the new one. The public names at ``partdist.*`` did not move.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

# old module path -> new module path
MOVED = {
    "partdist._ops": "partdist.ops.dmli",
    "partdist.mining": "partdist.ops.mining",
    "partdist.neighborhood": "partdist.ops.neighborhood",
    "partdist.part_dist": "partdist.ops.parts",
    "partdist.parts": "partdist.pooling",
    "partdist.models.parts": "partdist.models.part_heads",
}


def message(old: str, new: str) -> str:
    return (
        f"the module {old} moved to {new}; import from {new} (or use the public names at "
        f"partdist.*); {old} will be removed in the next release"
    )


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of :data:`MOVED` (after every other finder has failed)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # a plain module

    def exec_module(self, module: types.ModuleType) -> None:
        old = module.__name__
        new = MOVED[old]
        # stacklevel 2 skips the importlib frames: the warning points at the import statement
        warnings.warn(message(old, new), DeprecationWarning, stacklevel=2)
        target = importlib.import_module(new)
        for name, value in vars(target).items():
            if not (name.startswith("__") and name.endswith("__")):
                setattr(module, name, value)
        if hasattr(target, "__all__"):
            module.__all__ = list(target.__all__)
        module.__doc__ = f"Deprecated alias of :mod:`{new}` (moved; removed in the next release)."

        def __getattr__(name):  # anything added to the new module later
            return getattr(target, name)

        module.__getattr__ = __getattr__


class _Package(types.ModuleType):
    """The ``partdist`` package: importing the old path ``partdist.part_dist`` does not
    replace the function ``partdist.part_dist`` with that module (as before the move)."""

    def __setattr__(self, name, value):
        if (
            isinstance(value, types.ModuleType)
            and f"{self.__name__}.{name}" in MOVED
            and not isinstance(self.__dict__.get(name, value), types.ModuleType)
        ):
            return
        super().__setattr__(name, value)


def install(package: types.ModuleType) -> None:
    """Appends the finder to ``sys.meta_path`` (once) and guards ``package``'s names."""
    package.__class__ = _Package
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())


def moved_attribute(package: str, name: str):
    """For a package's ``__getattr__``: the old submodule ``package.name`` (imported, which
    warns), so that ``partdist.mining`` keeps working as an attribute; ``None`` when
    ``package.name`` did not move."""
    old = f"{package}.{name}"
    if old not in MOVED:
        return None
    return importlib.import_module(old)
