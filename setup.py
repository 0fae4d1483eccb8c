"""Build of the partdist extension.

Always build against the torch that is already installed:

    pip install --no-build-isolation -e .

Environment variables
---------------------
PARTDIST_CUDA=1/0     force the CUDA kernels on / off (default: on when torch is a
                      CUDA build and nvcc is found under CUDA_HOME).
TORCH_CUDA_ARCH_LIST  CUDA architectures. Unset: the GPUs of this machine when it has
                      any (torch's own default), else DEFAULT_CUDA_ARCHS (Turing to
                      Hopper, with PTX of the last so that newer GPUs JIT-compile it).
PARTDIST_NATIVE=0     do not compile the CPU kernels with -march=native (default 1:
                      the extension is built on the machine it runs on).
PARTDIST_SANITIZE=1   build the CPU kernels with AddressSanitizer and
                      UndefinedBehaviorSanitizer (see the Makefile's sanitize target).
PARTDIST_DEBUG=1      -O0 -g. Without it the build is a release build: -O3 and no
                      debug information (-g0 last on the compile line overrides the
                      -g that Python's own CFLAGS carry): the CPU module is ~1.0 MB
                      instead of ~15.6 MB.
MAX_JOBS              parallel compile jobs for ninja.
"""

import glob
import os
import sys

import setuptools
from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# CUDA architectures of a build on a machine without a GPU: sm_75 (T4) to sm_90 (H100),
# and PTX of sm_90 for anything newer (the driver compiles it at first use).
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def _env_flag(name, default=None):
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    return v.strip().lower() not in ("0", "false", "no", "off")


# torch guesses CUDA_HOME from the nvcc on PATH; on these machines that is a wrapper in
# /usr/local/bin and the guess (/usr/local) fails at link time. Default it before torch
# reads it.
if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

# pyproject.toml's SPDX `license` and `license-files` need setuptools >= 77; with
# --no-build-isolation the installed setuptools builds, so say so before it fails obscurely.
if int(setuptools.__version__.split(".")[0]) < 77:
    sys.exit(
        "partdist: setuptools %s is too old to build partdist; run `pip install -U 'setuptools>=77' wheel` "
        "first, then `pip install --no-build-isolation .`" % setuptools.__version__
    )

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - message for users
    sys.exit(
        "partdist: install torch first, then build with `pip install --no-build-isolation .` "
        "(build isolation would download a different torch)."
    )


def _want_cuda():
    forced = _env_flag("PARTDIST_CUDA")
    torch_cuda = torch.version.cuda is not None
    cuda_home = os.environ.get("CUDA_HOME")
    nvcc = bool(cuda_home) and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))
    if forced is True:
        if not torch_cuda:
            sys.exit(
                "partdist: PARTDIST_CUDA=1 but the installed torch %s is a CPU build; install a "
                "CUDA build of torch or unset PARTDIST_CUDA." % torch.__version__
            )
        if not nvcc:
            sys.exit("partdist: PARTDIST_CUDA=1 but nvcc was not found under CUDA_HOME=%r" % cuda_home)
        return True
    if forced is False:
        return False
    return torch_cuda and nvcc


def default_cuda_arch_list(environ, visible_gpus):
    """TORCH_CUDA_ARCH_LIST for a CUDA build: the user's setting; unset, None (torch's
    default: the GPUs present) when there are any, else DEFAULT_CUDA_ARCHS."""
    if environ.get("TORCH_CUDA_ARCH_LIST"):
        return environ["TORCH_CUDA_ARCH_LIST"]
    return None if visible_gpus > 0 else DEFAULT_CUDA_ARCHS


def libstdcxx_link_args(search_dirs, exists, loaded_libstdcxx):
    """Link arguments that keep the C++ runtime shared (a pure function, tested).

    ``g++`` links ``-lstdc++``; the linker takes, directory by directory of the compiler's
    library search path, ``libstdc++.so`` and else ``libstdc++.a``. A compiler wrapper whose
    ``-B`` folder holds only ``libstdc++.a`` (seen on the GPU machine: ``/opt/gcc/bin/g++``)
    so links a private copy of libstdc++ into the extension, beside the shared one torch has
    loaded: two C++ runtimes in one process, and formatting a number into an error message
    crashed (SIGSEGV in ``std::ostream::_M_insert<long>``). Then the shared library torch uses
    (``loaded_libstdcxx``, a path) is named explicitly, before g++'s own ``-lstdc++``.
    Returns ``(args, why)``; ``([], None)`` when the search finds the shared library first."""
    for d in search_dirs:
        if exists(os.path.join(d, "libstdc++.so")):
            return [], None
        if exists(os.path.join(d, "libstdc++.a")):
            if not loaded_libstdcxx:
                return [], "the compiler would link %s statically and torch's libstdc++ was not found" % d
            lib_dir, name = os.path.split(loaded_libstdcxx)
            return (["-L" + lib_dir, "-l:" + name],
                    "the compiler would link libstdc++.a of %s into the extension; linking %s instead"
                    % (d, loaded_libstdcxx))
    return [], None


def _libstdcxx_link_args():
    if not sys.platform.startswith("linux"):
        return []
    import subprocess

    cxx = os.environ.get("CXX") or "c++"
    try:
        out = subprocess.run([cxx, "-print-search-dirs"], capture_output=True, text=True, timeout=60).stdout
        with open("/proc/self/maps") as fh:  # torch (imported above) has loaded its libstdc++
            loaded = sorted({ln.split()[-1] for ln in fh if "/libstdc++.so" in ln})
    except (OSError, subprocess.SubprocessError):
        return []
    dirs = [ln.split("=", 1)[1] for ln in out.splitlines() if ln.startswith("libraries:") and "=" in ln]
    dirs = [os.path.normpath(d) for d in (dirs[0].split(":") if dirs else []) if d]
    args, why = libstdcxx_link_args(dirs, os.path.exists, loaded[0] if loaded else None)
    if why:
        print("partdist: %s (CXX=%s)" % (why, cxx), file=sys.stderr)
    return args


def _visible_gpus():
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # pragma: no cover - a broken driver counts as none
        return 0


def _extensions():
    with_cuda = _want_cuda()
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    cu_sources = sorted(glob.glob("csrc/**/*.cu", recursive=True))
    debug = _env_flag("PARTDIST_DEBUG", False)
    sanitize = _env_flag("PARTDIST_SANITIZE", False)

    opt = ["-O0", "-g"] if debug else ["-O3"]
    cxx = opt + ["-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    ldflags = ["-fopenmp"] + _libstdcxx_link_args()
    if _env_flag("PARTDIST_NATIVE", True) and not sanitize:
        cxx.append("-march=native")
    if sanitize:
        san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
        cxx += san
        ldflags += san
    if not debug and not sanitize:
        cxx.append("-g0")  # last wins over the -g in Python's CFLAGS: no debug information
    nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
    macros = [("Py_LIMITED_API", "0x030A0000")]
    if with_cuda:
        archs = default_cuda_arch_list(os.environ, _visible_gpus())
        if archs is not None:
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        print("partdist: CUDA architectures %s" % (archs or "of the GPUs present"), file=sys.stderr)
        macros.append(("PARTDIST_WITH_CUDA", None))
        ext = CUDAExtension(
            "partdist._C",
            sources + cu_sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=ldflags,
            py_limited_api=True,
        )
    else:
        ext = CppExtension(
            "partdist._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=ldflags,
            py_limited_api=True,
        )
    print("partdist: building %s kernels" % ("CPU + CUDA" if with_cuda else "CPU"), file=sys.stderr)
    return [ext]


# Name, version (partdist/_version.py), dependencies, license and the `partdist` command are
# in pyproject.toml; this file only describes the compiled extension.
def main():
    setup(
        ext_modules=_extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )


# pip / setuptools run this file as __main__; tests import it for its functions.
if __name__ == "__main__":
    main()
