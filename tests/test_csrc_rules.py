"""Rules of the C++/CUDA sources that no CPU run can show, checked on the code:

* every CUDA op runs under a device guard of its inputs' device: all op registrations go
  through ``impl_all`` (csrc/common/registration.h), which wraps each implementation in
  ``with_device_guard``; CUDA kernels are launched only by ``CudaExec``
  (csrc/common/cuda_launch.cuh), on the current device's stream;
* no GEMM that can reach a GPU calls ATen's mm/bmm/matmul directly: they go through the
  ``fp32_*`` wrappers of csrc/common/matmul.h (float32 accuracy under the user's TF32
  setting, which is read, never changed); only the CPU launchers (``*_cpu.cpp``) may call
  ATen's GEMMs directly."""

import pathlib
import re

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"


def _sources():
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".h", ".cuh", ".cpp", ".cu"))


def _code(p):
    """The file without its comments."""
    s = p.read_text()
    s = re.sub(r"/\*.*?\*/", "", s, flags=re.S)
    return re.sub(r"//[^\n]*", "", s)


def test_impl_all_wraps_every_op_in_a_device_guard():
    reg = _code(CSRC / "common" / "registration.h")
    body = re.search(r"void impl_all\(.*?\n}", reg, re.S).group(0)
    assert "m.impl(" in body and "with_device_guard(o.fn)" in body, body
    guard = re.search(r"auto with_device_guard\(.*?\n}", reg, re.S).group(0)
    assert "OptionalDeviceGuard" in guard and "note_device" in guard


def test_cuda_ops_are_registered_only_through_impl_all():
    for p in _sources():
        code = _code(p)
        if p.suffix in (".cu", ".cuh"):
            assert "m.impl(" not in code and "TORCH_LIBRARY_IMPL" not in code.replace(
                "#define PARTDIST_CUDA_BACKEND", ""), f"{p}: register CUDA ops with PARTDIST_CUDA_BACKEND"
        # a CUDA registration of the partdist namespace written by hand would bypass the guard
        assert not re.search(r"TORCH_LIBRARY_IMPL\(\s*partdist\s*,\s*CUDA", code), p
    for p in CSRC.rglob("*.cu"):
        assert "PARTDIST_CUDA_BACKEND(" in _code(p), f"{p}: a CUDA file registers its family's backend"


def test_kernel_launches_only_through_cuda_exec():
    for p in _sources():
        if p.name == "cuda_launch.cuh":
            continue
        assert "<<<" not in _code(p), f"{p}: launch kernels through CudaExec (common/cuda_launch.cuh)"


def test_gemms_that_reach_a_gpu_use_the_fp32_wrappers():
    direct = re.compile(r"\bat::(mm|mm_out|bmm|bmm_out|matmul|addmm|baddbmm)\s*\(")
    for p in _sources():
        if p.name == "matmul.h" or p.name.endswith("_cpu.cpp"):
            continue
        m = direct.search(_code(p))
        assert m is None, f"{p}: {m.group(0)} -> use fp32_mm / fp32_mm_out / fp32_bmm / fp32_matmul (common/matmul.h)"
    assert "setAllowTF32" not in "".join(_code(p) for p in _sources())  # never changed


def test_the_tests_can_fail(tmp_path, monkeypatch):
    """The GEMM rule on a file that breaks it."""
    bad = tmp_path / "bad_launch.h"
    bad.write_text("// at::mm( in a comment is fine\nat::Tensor f(at::Tensor a) { return at::bmm(a, a); }\n")
    monkeypatch.setattr(__import__(__name__), "_sources", lambda: [bad])
    import pytest

    with pytest.raises(AssertionError, match="fp32_bmm"):
        test_gemms_that_reach_a_gpu_use_the_fp32_wrappers()
