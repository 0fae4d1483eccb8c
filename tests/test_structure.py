"""Where things live: each package imports only what is below it, the references share no code
with what they check, and importing the package warns nothing."""

import ast
import pathlib
import subprocess
import sys

import pytest

import partdist

PKG = pathlib.Path(partdist.__file__).parent


def _is_module(package, name):
    folder = PKG.parent.joinpath(*package.split("."), name)
    return folder.is_dir() or folder.with_suffix(".py").exists() or any(folder.parent.glob(f"{name}.*.so"))


def _imports(path):
    """The absolute names of the ``partdist`` modules a source file imports."""
    package = list(path.relative_to(PKG.parent).parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "partdist")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                if node.module:
                    out.add(mod)
                else:  # from .. import x: the module x, or the name x of the package (its face)
                    out.update(f"{mod}.{a.name}" if _is_module(mod, a.name) else mod for a in node.names)
            elif node.module and node.module.split(".")[0] == "partdist":
                out.update(f"{node.module}.{a.name}" if _is_module(node.module, a.name) else node.module
                           for a in node.names)
    return out


def _files(sub):
    return sorted((PKG / sub).rglob("*.py")) if (PKG / sub).is_dir() else [PKG / f"{sub}.py"]


@pytest.mark.parametrize("layer,forbidden", [
    ("models", ("partdist.eval", "partdist.train", "partdist.cli", "partdist.runs", "partdist.search")),
    ("eval", ("partdist.train", "partdist.cli")),
    ("runs", ("partdist.eval", "partdist.train", "partdist.cli")),
    ("train", ("partdist.cli", "partdist.eval")),
    ("reference", ("partdist.ops", "partdist.eval", "partdist.pooling", "partdist.losses")),
])
def test_layers_import_only_what_is_below_them(layer, forbidden):
    bad = {f.relative_to(PKG).as_posix(): sorted(m for m in _imports(f) if m.startswith(forbidden))
           for f in _files(layer)}
    assert not {k: v for k, v in bad.items() if v}


def test_no_module_inside_the_package_imports_its_face():
    """Modules reach the ops through ``partdist.ops``, not ``import partdist`` (the package's
    ``__init__``, which imports them)."""
    faces = [f.relative_to(PKG).as_posix() for f in PKG.rglob("*.py")
             if f.name != "__main__.py" and "partdist" in _imports(f) and f != PKG / "__init__.py"]
    assert faces == []


def test_pos_int_check_has_one_definition():
    defs = [f.relative_to(PKG).as_posix() for f in PKG.rglob("*.py")
            for node in ast.walk(ast.parse(f.read_text()))
            if isinstance(node, ast.FunctionDef) and "pos_int" in node.name]
    assert defs == ["_checks.py"]


@pytest.mark.slow  # a fresh interpreter
def test_import_partdist_warns_nothing_and_has_no_cycle():
    # a fresh interpreter: importing the package (and eval first) raises no warning and no ImportError
    code = (
        "import warnings; warnings.simplefilter('error');"
        "import partdist.eval.streaming, partdist, partdist.compat, partdist.models, partdist.reference, partdist.cli;"
        "assert partdist.local_dist_topk is partdist.eval.streaming.local_dist_topk"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reference_names():
    import partdist.reference as R

    assert len(R.__all__) == len(set(R.__all__))
    for name in R.__all__:
        assert callable(getattr(R, name)), name


def _registrations(kind):
    """``{file: count}`` of ``torch.library.register_<kind>`` / ``@op.register_<kind>`` in the package."""
    out = {}
    for f in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == f"register_{kind}":
                rel = f.relative_to(PKG).as_posix()
                out[rel] = out.get(rel, 0) + 1
    return out


@pytest.mark.parametrize("kind", ["fake", "autograd"])
def test_fake_kernels_and_python_autograd_live_in_ops(kind):
    """CONTRIBUTING.md: the fake kernel of every op, and its autograd where it is registered
    from Python, sit in ``partdist/ops/<family>.py`` beside the public function."""
    where = _registrations(kind)
    assert where and all(f.startswith("ops/") for f in where), where


def test_every_op_has_a_fake_kernel():
    import torch
    from torch._library.simple_registry import singleton

    import partdist.eval  # noqa: F401  (every ops module imported)

    names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("partdist::"))
    assert "partdist::rank_metrics" in names and "partdist::dmli" in names
    def takes_tensors(name):
        ns, op = name.split("::")
        schema = getattr(torch.ops, ns).__getattr__(op).default._schema
        return any("Tensor" in str(a.type) for a in list(schema.arguments) + list(schema.returns))

    # host-side ops without tensors (the tile plans, the CPU instruction-set switch) need no fake kernel
    missing = [n for n in names if singleton.find(n).fake_impl.kernel is None and takes_tensors(n)]
    assert missing == []
    assert not takes_tensors("partdist::_local_dist_tile_plan") and takes_tensors("partdist::dmli")
