"""setup.py's build decisions that can be checked without building (pure functions)."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("partdist_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines the functions; builds nothing
    return mod


def test_default_cuda_arch_list(setup_module):
    """Without TORCH_CUDA_ARCH_LIST a build with no GPU present covers Turing to Hopper
    with PTX of the last (newer GPUs JIT it); with GPUs present torch's default (None)
    builds for them; a user's setting wins."""
    f = setup_module.default_cuda_arch_list
    archs = f({}, 0)
    assert archs.split(";") == ["7.5", "8.0", "8.6", "8.9", "9.0+PTX"]
    assert f({"TORCH_CUDA_ARCH_LIST": ""}, 0) == archs
    assert f({}, 2) is None
    assert f({"TORCH_CUDA_ARCH_LIST": "8.9"}, 0) == "8.9"


def test_libstdcxx_stays_shared(setup_module):
    f = setup_module.libstdcxx_link_args
    torch_lib = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.33"
    # the system compiler: the shared library comes first, nothing to add
    files = {"/usr/lib/gcc/x86_64-linux-gnu/13/libstdc++.so", "/usr/lib/gcc/x86_64-linux-gnu/13/libstdc++.a"}
    assert f(["/usr/lib/gcc/x86_64-linux-gnu/13"], files.__contains__, torch_lib) == ([], None)
    # a wrapper whose -B folder holds only the static archive (the GPU machine's /opt/gcc/bin/g++)
    files2 = files | {"/opt/gcc/lib/gcc/x86_64-linux-gnu/13/libstdc++.a"}
    args, why = f(["/opt/gcc/lib/gcc/x86_64-linux-gnu/13", "/usr/lib/gcc/x86_64-linux-gnu/13"], files2.__contains__,
                  torch_lib)
    assert args == ["-L/usr/lib/x86_64-linux-gnu", "-l:libstdc++.so.6.0.33"]
    assert "/opt/gcc/lib/gcc/x86_64-linux-gnu/13" in why and torch_lib in why
    # the same folder with both: the linker takes the shared one
    files3 = files2 | {"/opt/gcc/lib/gcc/x86_64-linux-gnu/13/libstdc++.so"}
    assert f(["/opt/gcc/lib/gcc/x86_64-linux-gnu/13"], files3.__contains__, torch_lib) == ([], None)
    # static first and torch's library unknown: nothing to add, but say so
    args, why = f(["/opt/gcc/lib/gcc/x86_64-linux-gnu/13"], files2.__contains__, None)
    assert args == [] and "statically" in why
    # no libstdc++ anywhere on the path (not a g++): nothing
    assert f(["/nowhere"], files.__contains__, torch_lib) == ([], None)


def test_this_build_links_one_shared_libstdcxx():
    """The extension in use needs the shared libstdc++ and defines none of its symbols."""
    import partdist

    so = [os.path.join(os.path.dirname(partdist.__file__), n) for n in os.listdir(os.path.dirname(partdist.__file__))
          if n.startswith("_C") and n.endswith(".so")]
    assert so
    import subprocess

    try:
        dyn = subprocess.run(["nm", "-D", "--defined-only", "-C", so[0]], capture_output=True, text=True).stdout
        needed = subprocess.run(["objdump", "-p", so[0]], capture_output=True, text=True).stdout
    except OSError:
        pytest.skip("binutils (nm, objdump) not installed")
    assert "libstdc++.so" in needed
    assert "std::ostream::_M_insert<long>" not in dyn and "std::locale::locale()" not in dyn
