"""Verify partdist on a GPU machine in one command: build, test, sanitize, bench, report.

    make gpu-check [STAGE=build|test|sanitize|bench|all] [OUT=gpu-report] [PYTHON=python3]
    python3 tools/gpu_check.py --stage test --out gpu-report

Stages (comma-separated, or ``all`` = build,test,sanitize,bench in that order):

build     builds the extension in place (``setup.py build_ext --inplace``; ``--build-mode pip`` runs
          ``pip install --no-build-isolation --no-deps -e .`` instead) with PARTDIST_CUDA=1 and, when
          TORCH_CUDA_ARCH_LIST is unset, the compute capability of the GPU present; records nvcc,
          torch, driver and GPU; checks that every partdist op with a CPU kernel has a CUDA kernel
          and that one op runs on the GPU and matches the CPU.
test      the whole test suite (``--tests`` to narrow it); FAILS when torch.cuda.is_available() is
          false in the pytest process, when any CUDA test was skipped, when no CUDA test ran, or
          on any failure/error. A pytest plugin (this module, loaded with ``-p gpu_check``) records
          every test's outcome, skip reason and whether it is a CUDA test (``cuda`` marker, a
          skipif whose reason names CUDA/GPU, or a ``cuda`` parameter/name part); junit XML is the
          fallback.
sanitize  compute-sanitizer memcheck, racecheck, initcheck, synccheck, one process each, over
          tools/gpu_sanitize_ops.py (every CUDA op forward + backward once at small sizes, compared
          with the CPU). Errors in partdist kernels fail; errors only in other kernels are warnings.
bench     every benchmark with ``--device cuda --device cpu --json``: the GPU figures beside the CPU
          ones and beside the vectorized PyTorch versions on the same GPU, and the GPU targets
          (met / missed), which the benchmarks themselves define.

Each stage runs under a time limit (``--stage-timeout``, default 470 s) split among its
commands; a command that runs past its share is killed (its whole process group) and reported
as ``timeout``. The report (``report.json`` + ``report.md``, logs in per-stage folders) goes to
``--out``; running stages in separate commands with the same ``--out`` merges them into one
report. A short table is printed last. Exit status 0 only when every stage run now passed.

Without a GPU: ``--allow-cpu`` turns "no CUDA" into warnings; ``--dry-run`` (implies it) also uses
tiny sizes and a short test selection, so that every stage runs on a CPU machine in a few minutes
and writes the report: that shows the script's paths work, not the GPU.
"""

from __future__ import annotations

import argparse
import collections
import datetime as _dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
STAGES = ("build", "test", "sanitize", "bench")
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
# name -> (script, weight of the stage time, extra args for the full run, extra args for --dry-run)
BENCHES = collections.OrderedDict(
    [
        ("dmli", ("bench_dmli.py", 1.5, [], ["--quick"])),
        ("mining", ("bench_mining.py", 1.0, [], ["--quick", "--sizes", "64,128"])),
        ("neighborhood", ("bench_neighborhood.py", 0.8, [], ["--quick"])),
        ("parts", ("bench_parts.py", 1.0, [], ["--quick"])),
        # the CPU side of the Market benchmark at C = 128 only (C = 2048 takes minutes on a CPU)
        ("market", ("bench_market.py", 4.0, ["--dense-sizes", "1500,3000", "--ref-queries", "100", "--cpu-C", "128"],
                    ["--quick"])),
        # the gallery search at 10^6, one process (2 gloo processes: bench_search.py --world 1 2, CPU only)
        ("search", ("bench_search.py", 2.0, ["--sizes", "1000000", "--queries", "1000", "--exact-queries", "100",
                                             "--world", "1", "--global-recall"],
                    ["--sizes", "3000", "--queries", "50", "--exact-queries", "10", "--world", "1"])),
    ]
)
# --dry-run: the tests whose name or markers say cuda (all skipped on a CPU: exercises the skip detection)
DRY_RUN_TESTS = ["tests", "-k", "cuda"]
PASS, FAIL, TIMEOUT, SKIP, WARN = "pass", "FAIL", "timeout", "skipped", "pass (warnings)"
# shares of --total-timeout when several stages run in one command
STAGE_WEIGHTS = {"build": 1.0, "test": 1.0, "sanitize": 1.2, "bench": 2.0}

# The skip reason of the tests that need several GPUs (tests/test_gpu_user_conditions.py).
MULTI_GPU_REASON = "needs 2 CUDA devices"
# A name part or skip reason that says "CUDA" / "GPU".
CUDA_WORD = re.compile(r"(?i)\b(cuda|gpu|nvidia)\b")
# test function names that say CUDA: test_cuda_..., test_gpu_..., ..._cuda, ..._gpu
CUDA_FUNC_NAME = re.compile(r"(?i)^test_(cuda|gpu)(_|$)|_(cuda|gpu)$")
# a parameter id part that is a CUDA device: [cuda], [cuda-float32], [float64-cuda:0]
CUDA_PARAM_PART = re.compile(r"(?i)^(cuda|gpu)(:\d+)?$")


# ----------------------------------------------------------------------------------------- pytest plugin
# Loaded inside the pytest process with ``-p gpu_check`` (tools/ on PYTHONPATH); does nothing
# unless GPU_CHECK_PYTEST_JSON names the file to write.
_PLUGIN_RECORDS = []


def is_cuda_test(nodeid, marker_names=(), skipif_reasons=()):
    """Whether a test is a CUDA test: a ``cuda`` marker, a skipif whose reason names CUDA/GPU, a
    function name ``test_cuda_*`` / ``test_gpu_*`` / ``*_cuda`` / ``*_gpu``, or a parameter id part
    that is a CUDA device (``[cuda]``, ``[cuda-float32]``, ``[float64-cuda:0]``)."""
    if "cuda" in marker_names:
        return True
    if any(CUDA_WORD.search(str(r)) for r in skipif_reasons):
        return True
    name = nodeid.rsplit("::", 1)[-1]
    func, _, params = name.partition("[")
    if CUDA_FUNC_NAME.search(func):
        return True
    return any(CUDA_PARAM_PART.match(p) for p in re.split(r"[-,\]\s]+", params) if p)


def _item_is_cuda(item):
    names = {m.name for m in item.iter_markers()}
    reasons = []
    for m in item.iter_markers("skipif"):
        reasons.append(m.kwargs.get("reason", ""))
        reasons.extend(a for a in m.args if isinstance(a, str))
    return is_cuda_test(item.nodeid, names, reasons)


def pytest_collection_modifyitems(session, config, items):
    if not os.environ.get("GPU_CHECK_PYTEST_JSON"):
        return
    for item in items:
        item.user_properties.append(("gpu_check_cuda", int(_item_is_cuda(item))))


def _skip_reason(report):
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        reason = str(lr[2])
    else:
        reason = str(lr) if lr is not None else ""
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


def pytest_runtest_logreport(report):
    if not os.environ.get("GPU_CHECK_PYTEST_JSON"):
        return
    props = dict(report.user_properties or ())
    wasxfail = hasattr(report, "wasxfail")
    if report.when == "call" or (report.when == "setup" and not report.passed) or (
        report.when == "teardown" and report.failed
    ):
        if report.skipped:
            outcome = "xfailed" if wasxfail else "skipped"
        elif report.failed:
            outcome = "failed" if report.when == "call" else "error"
        else:
            outcome = "xpassed" if wasxfail else "passed"
        rec = {"nodeid": report.nodeid, "outcome": outcome, "when": report.when,
               "cuda": bool(int(props.get("gpu_check_cuda", 0))), "seconds": round(report.duration, 3)}
        if report.skipped:
            rec["reason"] = report.wasxfail if wasxfail else _skip_reason(report)
        elif report.failed:
            rec["reason"] = (report.longreprtext or "").strip().splitlines()[-1:][0] if report.longreprtext else ""
        _PLUGIN_RECORDS.append(rec)


def pytest_collectreport(report):
    if os.environ.get("GPU_CHECK_PYTEST_JSON") and report.failed:
        text = (report.longreprtext or "").strip().splitlines()
        _PLUGIN_RECORDS.append({"nodeid": report.nodeid, "outcome": "error", "when": "collect", "cuda": False,
                                "reason": text[-1] if text else "collection error"})


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("GPU_CHECK_PYTEST_JSON")
    if not path or hasattr(session.config, "workerinput"):  # xdist workers: the controller writes
        return
    torch = sys.modules.get("torch")
    avail = None
    if torch is not None:
        try:
            avail = bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001
            avail = False
    with open(path, "w") as fh:
        json.dump({"exitstatus": int(exitstatus), "cuda_available": avail, "records": _PLUGIN_RECORDS}, fh, indent=1)


# ----------------------------------------------------------------------------------------- analysis (pure)
def records_from_junit(path):
    """Test records from a pytest junit XML file (the fallback when the plugin wrote nothing)."""
    recs = []
    for case in ET.parse(path).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        nodeid = (cls.replace(".", "/") + ".py::" + name) if cls else name
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome, reason = "passed", ""
        for child in case:
            if child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
                reason = child.get("message", "")
                if reason.startswith("Skipped: "):
                    reason = reason[len("Skipped: "):]
            elif child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                reason = child.get("message", "")
        cuda = props.get("gpu_check_cuda")
        cuda = bool(int(cuda)) if cuda is not None else is_cuda_test(nodeid, (), (reason,) if outcome == "skipped" else ())
        recs.append({"nodeid": nodeid, "outcome": outcome, "cuda": cuda, "reason": reason})
    return recs


def analyze_tests(records, cuda_available, allow_cpu=False, pytest_rc=None, timed_out=False):
    """Stage verdict from the per-test records.

    Fails on: failed/errored tests; torch.cuda.is_available() false; any skipped CUDA test (a
    test classified as CUDA, or any skip whose reason names CUDA/GPU); no CUDA test passed; a pytest
    exit status not explained by the records; a timeout. With ``allow_cpu`` the CUDA conditions
    are warnings. Returns a dict with status, counts, failures, warnings and the skip lists.
    """
    counts = collections.Counter(r["outcome"] for r in records)
    failed = [r for r in records if r["outcome"] in ("failed", "error")]
    skipped = [r for r in records if r["outcome"] == "skipped"]
    cuda_skips = [r for r in skipped if r.get("cuda") or CUDA_WORD.search(r.get("reason", "") or "")]
    # tests of several GPUs skipped on a one-GPU machine: said in the report, not a failure
    multi_gpu = [r for r in cuda_skips if (r.get("reason") or "").startswith(MULTI_GPU_REASON)]
    cuda_skips = [r for r in cuda_skips if r not in multi_gpu]
    other_skips = [r for r in skipped if r not in cuda_skips and r not in multi_gpu]
    cuda_passed = [r for r in records if r.get("cuda") and r["outcome"] == "passed"]
    failures, warnings = [], []
    for r in failed:
        failures.append(f"{r['outcome']}: {r['nodeid']}" + (f" ({r.get('reason')})" if r.get("reason") else ""))
    cuda_problems = []
    if cuda_available is not True:
        cuda_problems.append("torch.cuda.is_available() is False in the pytest process"
                             if cuda_available is False else "torch.cuda.is_available() unknown (torch not imported)")
    if cuda_skips:
        reasons = collections.Counter(r.get("reason", "") for r in cuda_skips)
        top = "; ".join(f"{n}x '{k}'" for k, n in reasons.most_common(3))
        cuda_problems.append(f"{len(cuda_skips)} CUDA test(s) skipped ({top})")
    if not cuda_passed:
        cuda_problems.append("no CUDA test passed (none found by the cuda marker / skip reason / name)")
    (warnings if allow_cpu else failures).extend(cuda_problems)
    if multi_gpu:
        warnings.append(f"{len(multi_gpu)} multi-GPU test(s) skipped: fewer than 2 GPUs")
    if other_skips:
        reasons = collections.Counter(r.get("reason", "") for r in other_skips)
        warnings.append(f"{len(other_skips)} other test(s) skipped: " +
                        "; ".join(f"{n}x '{k}'" for k, n in reasons.most_common(5)))
    if not records:
        failures.append("no test results recorded")
    if pytest_rc not in (None, 0) and not failed and not timed_out:
        failures.append(f"pytest exited with status {pytest_rc}")
    if timed_out:
        status = TIMEOUT
        failures.append("the test run was cut at the stage time limit")
    elif failures:
        status = FAIL
    else:
        status = WARN if warnings else PASS
    return {
        "status": status,
        "counts": dict(counts),
        "cuda_tests_passed": len(cuda_passed),
        "cuda_skipped": [{"nodeid": r["nodeid"], "reason": r.get("reason", "")} for r in cuda_skips],
        "other_skipped": [{"nodeid": r["nodeid"], "reason": r.get("reason", "")} for r in other_skips],
        "failures": failures,
        "warnings": warnings,
    }


_SAN_HEADER = re.compile(r"^========= (\S.*)$")
_SAN_IGNORE = re.compile(r"^(COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|Target application returned|"
                         r"LEAK SUMMARY|Internal Sanitizer|This may|Use --)")


def parse_sanitizer_log(text):
    """Errors in a compute-sanitizer log, split by whether a device frame names partdist.

    Returns ``{"summary_errors": int or None, "partdist": [...], "other": [...]}`` where each list
    holds the header line of an error block plus the first device frame seen."""
    summary = None
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    if m:
        summary = int(m[-1])
    r = re.findall(r"RACECHECK SUMMARY: \d+ hazards? displayed \((\d+) errors?", text)
    if r:
        summary = max(summary or 0, int(r[-1]))
    blocks, cur = [], None
    for line in text.splitlines():
        h = _SAN_HEADER.match(line)
        if h:
            if cur:
                blocks.append(cur)
            cur = None if _SAN_IGNORE.match(h.group(1)) else {"header": h.group(1).strip(), "frames": [], "host": False}
            continue
        if cur is not None and line.startswith("=========") and line[9:10] == " ":
            body = line[9:].strip()
            if body.startswith("Saved host backtrace"):
                cur["host"] = True
            elif not cur["host"] and body:
                cur["frames"].append(body)
        elif cur is not None and not line.startswith("========="):
            blocks.append(cur)
            cur = None
    if cur:
        blocks.append(cur)
    ours, other = [], []
    for b in blocks:
        if b["header"].lower().startswith(("warning", "note")):
            continue
        frame = next((f for f in b["frames"] if f.startswith(("at ", "in ")) or " in " in f), b["frames"][0] if b["frames"] else "")
        entry = b["header"] + (f" | {frame}" if frame else "")
        (ours if any("partdist" in f for f in [b["header"]] + b["frames"]) else other).append(entry)
    return {"summary_errors": summary, "partdist": ours, "other": other}


def split_budget(total, weights):
    """Share of ``total`` for the first of ``weights`` (the rest get theirs later from what is left)."""
    s = sum(weights)
    return total * weights[0] / s if s > 0 else total


def stage_budget(stages_left, seconds_left, stage_timeout):
    """Seconds for the first of ``stages_left`` when ``seconds_left`` must cover them all: its
    weighted share (STAGE_WEIGHTS), at most ``stage_timeout``; a stage that needs less leaves the
    rest to the later ones, since the next call shares what is then left."""
    return min(stage_timeout, split_budget(max(0.0, seconds_left), [STAGE_WEIGHTS[s] for s in stages_left]))


# ----------------------------------------------------------------------------------------- running
class RunResult:
    def __init__(self, cmd, rc, timed_out, seconds, tail, log):
        self.cmd, self.rc, self.timed_out, self.seconds, self.tail, self.log = cmd, rc, timed_out, seconds, tail, log

    def as_dict(self):
        return {"cmd": shlex.join(self.cmd), "rc": self.rc, "timed_out": self.timed_out,
                "seconds": round(self.seconds, 1), "log": self.log}


def _kill_group(proc):
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_logged(cmd, log_path, timeout, env=None, echo=False, cwd=ROOT):
    """Run ``cmd`` in its own process group with output to ``log_path``; kill the group after
    ``timeout`` seconds. Never raises for the command's failure."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    tail = collections.deque(maxlen=60)
    t0 = time.monotonic()
    timed_out = False
    with open(log_path, "w", errors="replace") as log:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, text=True, errors="replace", bufsize=1)
        except OSError as e:
            log.write(f"cannot start: {e}\n")
            return RunResult(cmd, 127, False, 0.0, f"cannot start {cmd[0]}: {e}", log_path)

        def pump():
            for line in proc.stdout:
                log.write(line)
                tail.append(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()

        th = threading.Thread(target=pump, daemon=True)
        th.start()
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.wait()
        th.join(10)
        if timed_out:
            log.write(f"\n[gpu_check] killed after {timeout:.0f} s (stage time limit)\n")
    return RunResult(cmd, rc, timed_out, time.monotonic() - t0, "".join(tail), log_path)


_ENV_SNIPPET = r"""
import json, os, sys
info = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                cpu_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    capability="%d.%d" % torch.cuda.get_device_capability(0),
                    gpu_memory_gib=round(p.total_memory / 2**30, 1))
        try:
            info["cudnn"] = torch.backends.cudnn.version()
        except Exception:
            pass
except Exception as e:
    info["torch_error"] = "%s: %s" % (type(e).__name__, e)
print("GPUCHECK-JSON " + json.dumps(info))
"""

_KERNEL_SNIPPET = r"""
import json, torch
import partdist
info = {"partdist_file": partdist.__file__}
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("partdist::"))
has = torch._C._dispatch_has_kernel_for_dispatch_key
info["ops"] = names
info["cpu_ops"] = [n for n in names if has(n, "CPU")]
info["cuda_ops"] = [n for n in names if has(n, "CUDA")]
try:
    from partdist.ops import CPU_ONLY_OPS
except ImportError:  # an older partdist: every CPU op needs a CUDA kernel
    CPU_ONLY_OPS = {}
info["cpu_only_by_design"] = sorted(n for n in info["cpu_ops"] if n in CPU_ONLY_OPS and n not in info["cuda_ops"])
info["missing_cuda"] = [n for n in info["cpu_ops"] if n not in info["cuda_ops"] and n not in CPU_ONLY_OPS]
if torch.cuda.is_available() and info["cuda_ops"]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 8, 16, generator=g), torch.randn(6, 8, 16, generator=g)
    try:
        d = partdist.local_dist(x.cuda(), y.cuda()).cpu()
        info["smoke_max_diff"] = (d - partdist.local_dist(x, y)).abs().max().item()
    except Exception as e:
        info["smoke_error"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
print("GPUCHECK-JSON " + json.dumps(info))
"""

# An argument error whose message streams a number (a shape): it crashed the process (SIGSEGV)
# when the compiler linked a static copy of libstdc++ into the extension (setup.py now avoids
# that; this catches any other way the C++ runtime ends up twice in the process).
_ERROR_PATH_SNIPPET = r"""
import json, torch
import partdist
try:
    torch.ops.partdist.dmli(torch.rand(4, 4))
    info = {"error_path": "no error raised"}
except RuntimeError as e:
    info = {"error_path": "ok" if "must be a 3-D tensor" in str(e) and "[4, 4]" in str(e) else "message: " + str(e)[:200]}
print("GPUCHECK-JSON " + json.dumps(info))
"""


def _json_line(text):
    for line in reversed(text.splitlines()):
        if line.startswith("GPUCHECK-JSON "):
            return json.loads(line[len("GPUCHECK-JSON "):])
    return None


def _tool_line(cmd, pattern=None):
    exe = shutil.which(cmd[0]) or next((p for p in (os.path.join(d, "bin", cmd[0]) for d in _cuda_homes()) if os.path.exists(p)), None)
    if not exe:
        return None
    try:
        out = subprocess.run([exe] + cmd[1:], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if pattern:
        lines = [ln for ln in lines if re.search(pattern, ln)] or lines
    return lines[-1] if lines else None


def _cuda_homes():
    return [d for d in (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if d]


def _find_tool(name):
    exe = shutil.which(name)
    if exe:
        return exe
    for d in _cuda_homes():
        p = os.path.join(d, "bin", name)
        if os.path.exists(p):
            return p
    return None


class Check:
    def __init__(self, args):
        self.args = args
        self.py = args.python
        self.out = os.path.abspath(args.out)
        self.allow_cpu = args.allow_cpu or args.dry_run
        self.env_info = {}
        self.report_path = os.path.join(self.out, "report.json")
        self.report = {"stages": {}}
        if os.path.exists(self.report_path):  # stages of earlier commands with the same --out
            try:
                with open(self.report_path) as fh:
                    self.report = json.load(fh)
            except (OSError, ValueError):
                pass
        self.report.setdefault("stages", {})

    # environment for every command: the in-place build importable, tools/ for the pytest plugin
    def child_env(self, **extra):
        env = dict(os.environ)
        paths = [ROOT, TOOLS] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def collect_env(self):
        r = run_logged([self.py, "-c", _ENV_SNIPPET], os.path.join(self.out, "env.log"), 180, self.child_env())
        info = _json_line(r.tail) or {"error": r.tail.strip().splitlines()[-1:] or ["no output"]}
        info["nvidia_smi"] = _tool_line(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                         "--format=csv,noheader"])
        if info["nvidia_smi"] and "," in info["nvidia_smi"]:
            info["driver"] = info["nvidia_smi"].split(",")[1].strip()
        info["nvcc"] = _tool_line(["nvcc", "--version"], r"release")
        info["compute_sanitizer"] = _tool_line(["compute-sanitizer", "--version"], r"[Vv]ersion")
        info["cpu_count"] = os.cpu_count()
        info["host_time_utc"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        try:
            info["git"] = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                                         text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.env_info = info
        self.report["env"] = info
        return info

    @property
    def cuda(self):
        return bool(self.env_info.get("cuda_available"))

    def stage_dir(self, name):
        d = os.path.join(self.out, name)
        os.makedirs(d, exist_ok=True)
        return d

    def rel(self, path):
        return os.path.relpath(path, self.out)

    # ------------------------------------------------------------------------------------- build
    def stage_build(self, budget):
        d = self.stage_dir("build")
        res = {"commands": [], "failures": [], "warnings": [], "details": {}}
        env_extra = {}
        torch_cuda = self.env_info.get("torch_cuda")
        if torch_cuda:
            env_extra["PARTDIST_CUDA"] = os.environ.get("PARTDIST_CUDA", "1")
            if not os.environ.get("TORCH_CUDA_ARCH_LIST") and self.env_info.get("capability"):
                env_extra["TORCH_CUDA_ARCH_LIST"] = self.env_info["capability"]
        elif not self.allow_cpu:
            res["failures"].append(f"torch {self.env_info.get('torch')} is not a CUDA build: nothing to build for a GPU")
        if not self.cuda:
            (res["warnings"] if self.allow_cpu else res["failures"]).append("torch.cuda.is_available() is False")
        res["details"]["env"] = {k: v for k, v in env_extra.items()}
        inplace = [self.py, "setup.py", "build_ext", "--inplace"]
        pip = [self.py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."]
        t_end = time.monotonic() + max(budget * 0.8, budget - 60)  # the rest: kernel listing, GPU smoke run
        r = run_logged(pip if self.args.build_mode == "pip" else inplace, os.path.join(d, "build.log"),
                       t_end - time.monotonic(), self.child_env(**env_extra), self.args.verbose)
        res["commands"].append(r.as_dict() | {"log": self.rel(r.log)})
        if self.args.build_mode == "pip" and r.rc != 0 and not r.timed_out and re.search(
                r"(?i)externally.managed|permission denied|read-only file system|not writeable", r.tail):
            res["warnings"].append("pip may not install into this python (" + _last_error(r.tail)[:120] +
                                   "): built in place instead")
            r = run_logged(inplace, os.path.join(d, "build-inplace.log"), t_end - time.monotonic(),
                           self.child_env(**env_extra), self.args.verbose)
            res["commands"].append(r.as_dict() | {"log": self.rel(r.log)})
        if r.timed_out:
            res["failures"].append(f"build cut after {r.seconds:.0f} s")
            return self._finish(res, TIMEOUT, r)
        if r.rc != 0:
            res["failures"].append(f"build failed (exit {r.rc}): {_last_error(r.tail)}")
            return self._finish(res, FAIL, r)
        res["details"]["build_seconds"] = round(r.seconds, 1)
        sos = sorted(f for f in os.listdir(os.path.join(ROOT, "partdist")) if f.startswith("_C") and f.endswith(".so"))
        res["details"]["extension"] = sos
        cuobjdump = _find_tool("cuobjdump")
        if torch_cuda and not cuobjdump:
            res["details"]["cubins"] = "cuobjdump not found"
        if sos and cuobjdump and torch_cuda:
            try:
                so = os.path.join(ROOT, "partdist", sos[0])
                for kind in ("elf", "ptx"):
                    out = subprocess.run([cuobjdump, f"--list-{kind}", so], capture_output=True, text=True,
                                         timeout=60).stdout
                    res["details"]["cubins" if kind == "elf" else "ptx"] = sorted(set(re.findall(r"sm_\d+a?", out)))
            except (OSError, subprocess.TimeoutExpired):
                pass
        k = run_logged([self.py, "-c", _KERNEL_SNIPPET], os.path.join(d, "kernels.log"), 180, self.child_env(),
                       self.args.verbose)
        res["commands"].append(k.as_dict() | {"log": self.rel(k.log)})
        info = _json_line(k.tail)
        if info is None:
            res["failures"].append(f"import partdist / kernel listing failed: {_last_error(k.tail)}")
            return self._finish(res, FAIL, k)
        res["details"]["kernels"] = {"ops": len(info["ops"]), "cpu": len(info["cpu_ops"]), "cuda": len(info["cuda_ops"]),
                                     "missing_cuda": info["missing_cuda"],
                                     "cpu_only_by_design": info.get("cpu_only_by_design", []),
                                     "partdist_file": info["partdist_file"]}
        e = run_logged([self.py, "-c", _ERROR_PATH_SNIPPET], os.path.join(d, "error-path.log"), 60, self.child_env(),
                       self.args.verbose)
        res["commands"].append(e.as_dict() | {"log": self.rel(e.log)})
        einfo = _json_line(e.tail)
        if einfo is None:
            res["failures"].append(
                f"an op's argument error (a shape in its message) did not raise cleanly (exit status {e.rc}): "
                "the C++ runtime may be in the process twice (a libstdc++ linked statically into the "
                "extension, see setup.py); rebuild with the system compiler (CXX=/usr/bin/g++)")
        elif einfo["error_path"] != "ok":
            res["failures"].append("an op's argument error: " + einfo["error_path"])
        if not info["cuda_ops"]:
            (res["warnings"] if self.allow_cpu else res["failures"]).append("no partdist CUDA kernel is registered")
        elif info["missing_cuda"]:
            res["failures"].append("ops with a CPU kernel but no CUDA kernel: " + ", ".join(info["missing_cuda"]))
        if "smoke_error" in info:
            res["failures"].append("partdist.local_dist on the GPU: " + info["smoke_error"])
        elif "smoke_max_diff" in info:
            res["details"]["smoke_max_diff"] = info["smoke_max_diff"]
            if not info["smoke_max_diff"] <= 1e-4:
                res["failures"].append(f"partdist.local_dist GPU vs CPU differs by {info['smoke_max_diff']:.3g}")
        return self._finish(res, None, k)

    # ------------------------------------------------------------------------------------- test
    def stage_test(self, budget):
        d = self.stage_dir("test")
        res = {"commands": [], "failures": [], "warnings": [], "details": {}}
        rec_path, junit = os.path.join(d, "pytest-records.json"), os.path.join(d, "junit.xml")
        for p in (rec_path, junit):
            if os.path.exists(p):
                os.remove(p)
        tests = self.args.tests or (DRY_RUN_TESTS if self.args.dry_run else ["tests"])
        cmd = [self.py, "-m", "pytest", *tests, "-p", "gpu_check", "-p", "no:cacheprovider", "-q", "-rs",
               f"--junitxml={junit}"]
        if _has_module(self.py, "pytest_timeout", self.child_env()):
            cmd.append(f"--timeout={int(self.args.test_timeout)}")
        cmd += shlex.split(self.args.pytest_args or "")
        launches = os.path.join(d, "kernel-launches.json")
        r = run_logged(cmd, os.path.join(d, "pytest.log"), budget,
                       self.child_env(GPU_CHECK_PYTEST_JSON=rec_path, GPU_CHECK_LAUNCHES_JSON=launches),
                       self.args.verbose)
        if os.path.exists(launches):  # tests/test_gpu_user_conditions.py: launches per training step
            with open(launches) as fh:
                res["details"]["kernel_launches"] = json.load(fh)
        res["commands"].append(r.as_dict() | {"log": self.rel(r.log)})
        data = None
        if os.path.exists(rec_path):
            with open(rec_path) as fh:
                data = json.load(fh)
            records, avail = data["records"], data["cuda_available"]
            res["details"]["source"] = "plugin"
        elif os.path.exists(junit):
            records, avail = records_from_junit(junit), self.cuda
            res["details"]["source"] = "junit (the plugin wrote nothing)"
        else:
            records, avail = [], self.cuda
            res["details"]["source"] = "none"
        a = analyze_tests(records, avail, self.allow_cpu, r.rc, r.timed_out)
        if r.rc not in (0, 1) and not records:
            a["failures"].append(_last_error(r.tail))
        res["failures"] += a.pop("failures")
        res["warnings"] += a.pop("warnings")
        status = a.pop("status")
        res["details"].update(a)
        res["details"]["tests"] = tests
        return self._finish(res, status, r)

    # ------------------------------------------------------------------------------------- sanitize
    def stage_sanitize(self, budget):
        d = self.stage_dir("sanitize")
        res = {"commands": [], "failures": [], "warnings": [], "details": {"tools": {}}}
        script = os.path.join(TOOLS, "gpu_sanitize_ops.py")
        exe = _find_tool("compute-sanitizer")
        if not self.cuda or not exe:
            why = "no GPU" if not self.cuda else "compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)"
            if not self.allow_cpu:
                res["failures"].append(why)
                return self._finish(res, FAIL, None)
            # CPU dry run: the op script alone, without a sanitizer
            res["warnings"].append(f"{why}: ran the op script on the CPU without a sanitizer")
            j = os.path.join(d, "ops-cpu.json")
            r = run_logged([self.py, script, "--device", "cpu", "--json", j], os.path.join(d, "ops-cpu.log"), budget,
                           self.child_env(), self.args.verbose)
            res["commands"].append(r.as_dict() | {"log": self.rel(r.log)})
            res["details"]["tools"]["none (cpu)"] = {"rc": r.rc, "seconds": round(r.seconds, 1), "timed_out": r.timed_out,
                                                     "errors": None, "partdist_errors": [], "other_errors": [],
                                                     "ops": _ops_summary(r.tail, j)}
            if r.rc != 0:
                res["failures"].append(f"op script failed on the CPU (exit {r.rc}): {_last_error(r.tail)}")
            return self._finish(res, TIMEOUT if r.timed_out else None, r)
        tools = self.args.sanitize_tools
        t_end = time.monotonic() + budget
        status = None
        for i, tool in enumerate(tools):
            share = split_budget(t_end - time.monotonic(), [1.0] * (len(tools) - i))
            j = os.path.join(d, f"ops-{tool}.json")
            cmd = [exe, "--tool", tool, "--error-exitcode", "86", "--print-limit", "200", "--report-api-errors", "no",
                   self.py, script, "--device", "cuda", "--json", j]
            extra = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"} if tool in ("memcheck", "initcheck") else {}
            r = run_logged(cmd, os.path.join(d, f"{tool}.log"), share, self.child_env(**extra), self.args.verbose)
            res["commands"].append(r.as_dict() | {"log": self.rel(r.log)})
            with open(r.log, errors="replace") as fh:
                parsed = parse_sanitizer_log(fh.read())
            ops = _ops_summary(r.tail, j)
            res["details"]["tools"][tool] = {"rc": r.rc, "seconds": round(r.seconds, 1), "timed_out": r.timed_out,
                                             "errors": parsed["summary_errors"], "partdist_errors": parsed["partdist"][:20],
                                             "other_errors": parsed["other"][:20], "ops": ops}
            if r.timed_out:
                res["failures"].append(f"{tool}: cut after {r.seconds:.0f} s ({ops.get('line', 'no summary')})")
                status = TIMEOUT
                continue
            if parsed["partdist"]:
                res["failures"].append(f"{tool}: {len(parsed['partdist'])} error(s) in partdist kernels, first: "
                                       f"{parsed['partdist'][0]}")
            if parsed["other"]:
                msg = f"{tool}: {len(parsed['other'])} error(s) outside partdist kernels, first: {parsed['other'][0]}"
                res["warnings" if not parsed["partdist"] else "failures"].append(msg)
            if ops.get("failed"):
                res["failures"].append(f"{tool}: op cases failed under the sanitizer: " + "; ".join(ops["failed"][:5]))
            elif r.rc not in (0, 86):
                res["failures"].append(f"{tool}: exit {r.rc}: {_last_error(r.tail)}")
            elif r.rc == 86 and not (parsed["partdist"] or parsed["other"]):
                res["failures"].append(f"{tool}: reported errors (exit 86) that the log parser did not attribute; "
                                       f"see {self.rel(r.log)}")
        return self._finish(res, status, None)

    # ------------------------------------------------------------------------------------- bench
    def stage_bench(self, budget):
        d = self.stage_dir("bench")
        res = {"commands": [], "failures": [], "warnings": [], "details": {"benches": {}}, "targets": []}
        names = self.args.benches
        devices = (["cuda"] if self.cuda else []) + ["cpu"]
        if not self.cuda:
            (res["warnings"] if self.allow_cpu else res["failures"]).append("no GPU: CPU figures only, targets not measured")
            if not self.allow_cpu:
                return self._finish(res, FAIL, None)
        t_end = time.monotonic() + budget
        status = None
        for i, name in enumerate(names):
            script, _, full_args, dry_args = BENCHES[name]
            share = split_budget(t_end - time.monotonic(), [BENCHES[n][1] for n in names[i:]])
            j = os.path.join(d, f"{name}.json")
            if os.path.exists(j):
                os.remove(j)
            cmd = [self.py, os.path.join(ROOT, "benchmarks", script)]
            for dev in devices:
                cmd += ["--device", dev]
            cmd += (dry_args if self.args.dry_run else full_args) + ["--json", j]
            r = run_logged(cmd, os.path.join(d, f"{name}.log"), share, self.child_env(), True)
            res["commands"].append(r.as_dict() | {"log": self.rel(r.log)})
            data = {}
            if os.path.exists(j):
                with open(j) as fh:
                    data = json.load(fh)
            res["details"]["benches"][name] = {"rc": r.rc, "seconds": round(r.seconds, 1), "timed_out": r.timed_out,
                                               "records": data.get("records", [])}
            res["targets"] += data.get("targets", [])
            if r.timed_out:
                res["failures"].append(f"{name}: cut after {r.seconds:.0f} s (figures up to then are kept)")
                status = TIMEOUT
            elif r.rc != 0:
                res["failures"].append(f"{name}: exit {r.rc}: {_last_error(r.tail)}")
        missed = [t for t in res["targets"] if t.get("met") is False]
        if missed:
            res["warnings"].append("GPU target(s) missed: " + "; ".join(t["name"] for t in missed))
        if self.cuda and not res["targets"]:
            res["warnings"].append("no GPU target was measured")
        return self._finish(res, status, None)

    # ------------------------------------------------------------------------------------- common
    def _finish(self, res, status, last):
        if status is None:
            status = FAIL if res["failures"] else (WARN if res["warnings"] else PASS)
        res["status"] = status
        if status not in (PASS, WARN) and last is not None:
            res["log_tail"] = last.tail[-3000:]
        return res

    def run_stage(self, name, budget):
        t0 = time.monotonic()
        started = _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S")
        print(f"[gpu_check] stage {name}: started {started} UTC, limit {budget:.0f} s", flush=True)
        try:
            res = getattr(self, "stage_" + name)(budget)
        except Exception as e:  # noqa: BLE001  (a bug here must still leave a report)
            import traceback

            res = {"status": FAIL, "failures": [f"gpu_check internal error: {type(e).__name__}: {e}"],
                   "warnings": [], "details": {}, "log_tail": traceback.format_exc()}
        res["seconds"] = round(time.monotonic() - t0, 1)
        res["started_utc"] = started
        res["allow_cpu"] = self.allow_cpu
        res["dry_run"] = bool(self.args.dry_run)
        self.report["stages"][name] = res
        self.write()
        print(f"[gpu_check] stage {name}: {res['status']} in {res['seconds']:.0f} s", flush=True)
        for f in res["failures"][:10]:
            print(f"[gpu_check]   failure: {f}", flush=True)
        if res.get("log_tail") and res["status"] not in (PASS, WARN):
            print("[gpu_check]   last output:\n" + "\n".join(res["log_tail"].splitlines()[-25:]), flush=True)
        return res

    def write(self):
        os.makedirs(self.out, exist_ok=True)
        tmp = self.report_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.report, fh, indent=1, default=str)
        os.replace(tmp, self.report_path)
        with open(os.path.join(self.out, "report.md"), "w") as fh:
            fh.write(render_markdown(self.report))


def _has_module(py, mod, env):
    try:
        return subprocess.run([py, "-c", f"import {mod}"], env=env, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _last_error(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"(?i)error|exception|failed|traceback|killed", ln):
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"


def _ops_summary(tail, json_path):
    out = {}
    m = re.findall(r"SANITIZE-OPS: (\d+)/(\d+) cases passed", tail or "")
    if m:
        out["line"] = f"{m[-1][0]}/{m[-1][1]} op cases passed"
        out["passed"], out["total"] = int(m[-1][0]), int(m[-1][1])
    if os.path.exists(json_path):
        with open(json_path) as fh:
            cases = json.load(fh).get("cases", [])
        out["failed"] = [f"{c['case']}: {c.get('error', '')}" for c in cases if not c["ok"]]
        out.setdefault("passed", sum(c["ok"] for c in cases))
        out.setdefault("total", len(cases))
    return out


# ----------------------------------------------------------------------------------------- report
def _fmt_value(v, unit):
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s"
    if unit == "x":
        return f"{v:.3g}x"
    if unit == "B":
        return f"{v / 2**20:.0f} MiB"
    return f"{v:.4g}"


def stage_rows(report):
    rows = []
    for name in list(STAGES) + [s for s in report.get("stages", {}) if s not in STAGES]:
        st = report.get("stages", {}).get(name)
        if not st:
            continue
        summary = (st["failures"][:1] or st["warnings"][:1] or [""])[0]
        if name == "test" and "counts" in st.get("details", {}):
            c = st["details"]["counts"]
            summary = (", ".join(f"{v} {k}" for k, v in sorted(c.items())) +
                       f"; {st['details'].get('cuda_tests_passed', 0)} CUDA passed, "
                       f"{len(st['details'].get('cuda_skipped', []))} CUDA skipped" + (f"; {summary}" if summary else ""))
        rows.append([name, st["status"] + (" (dry run)" if st.get("dry_run") else ""), f"{st.get('seconds', 0):.0f} s",
                     summary[:160]])
    return rows


def target_rows(report):
    rows = []
    for t in report.get("stages", {}).get("bench", {}).get("targets", []):
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t.get("met")]
        rows.append([t["name"], _fmt_value(t.get("value"), t.get("unit")), f"{t.get('op', '')} {_fmt_value(t.get('limit'), t.get('unit'))}",
                     verdict])
    return rows


def _md_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def pivot_records(records):
    """``{(case, method): {device: (value, unit), "note": str}}`` in first-seen order: each
    figure of one case and method on every device, side by side."""
    out = collections.OrderedDict()
    for rec in records:
        cell = out.setdefault((rec.get("case", ""), rec.get("method", "")), {})
        dev = str(rec.get("device", "")).split(":")[0]
        cell[dev] = (rec.get("value"), rec.get("unit"))
        if rec.get("note"):
            cell["note"] = rec["note"]
    return out


def _md_build(b):
    """The build stage's lines of the report."""
    out = [f"- extension: {b.get('extension')}, cubins: {b.get('cubins', '-')}, PTX: {b.get('ptx', '-')}, "
           f"build env: {b.get('env')}, build time: {b.get('build_seconds', '-')} s"]
    if "kernels" in b:
        k = b["kernels"]
        out.append(f"- partdist ops: {k['ops']}, with CPU kernel: {k['cpu']}, with CUDA kernel: {k['cuda']}; "
                   f"missing CUDA: {k['missing_cuda'] or 'none'}; GPU smoke diff: {b.get('smoke_max_diff', '-')}")
    return out


def _md_tests(t):
    """The test stage's lines of the report."""
    out = [f"- selection: {' '.join(t.get('tests', []))}; outcomes: {t.get('counts')}; CUDA tests passed: "
           f"{t.get('cuda_tests_passed')}"]
    for kind in ("cuda_skipped", "other_skipped"):
        if t.get(kind):
            out.append(f"- {kind.replace('_', ' ')} ({len(t[kind])}):")
            out += [f"  - `{x['nodeid']}`: {x['reason']}" for x in t[kind][:50]]
    if t.get("kernel_launches"):
        out.append("- kernel launches (torch.profiler, one step):")
        out += [f"  - {k}: {n}" for k, n in t["kernel_launches"].items()]
    return out


def render_markdown(report):
    env = report.get("env", {})
    lines = ["# partdist GPU check\n"]
    keys = ["gpu", "capability", "gpu_memory_gib", "driver", "torch", "torch_cuda", "cudnn", "nvcc",
            "compute_sanitizer", "python", "cpu_count", "git", "host_time_utc"]
    lines.append(_md_table(["", ""], [[k, env.get(k, "-")] for k in keys if k in env] or [["env", "not collected"]]))
    if not env.get("cuda_available"):
        lines.append("\n**No GPU was available to this run** (torch.cuda.is_available() is False): the figures "
                     "below are CPU-only and the GPU targets are not measured.\n")
    lines.append("\n## Stages\n")
    lines.append(_md_table(["stage", "status", "time", "summary"], stage_rows(report)))
    stages = report.get("stages", {})
    details = {name: st.get("details", {}) for name, st in stages.items()}

    def section(title, body, blank_after=False):
        """``## title`` and its lines; nothing when there are none."""
        if body:
            lines.append(f"\n## {title}\n")
            lines.extend(body + [""] if blank_after else body)

    section("Failures", [f"- **{n}**: {f}" for n, st in stages.items() for f in st.get("failures", [])], True)
    section("Warnings", [f"- {n}: {w}" for n, st in stages.items() for w in st.get("warnings", [])], True)
    section("Build", _md_build(details["build"]) if details.get("build") else [], True)
    section("Tests", _md_tests(details["test"]) if details.get("test") else [], True)
    s = details.get("sanitize", {}).get("tools", {})
    if s:
        rows = [[tool, v.get("errors", "-"), len(v.get("partdist_errors", [])), len(v.get("other_errors", [])),
                 v.get("ops", {}).get("line", "-"), f"{v.get('seconds', '-')} s" + (" (cut)" if v.get("timed_out") else "")]
                for tool, v in s.items()]
        section("compute-sanitizer",
                [_md_table(["tool", "error summary", "in partdist kernels", "elsewhere", "op cases", "time"], rows)])
    tr = target_rows(report)
    if tr:
        section("GPU targets", [_md_table(["target", "measured", "goal", "verdict"], tr)])
    benches = details.get("bench", {}).get("benches", {})
    if benches:
        rows = []
        for name, bd in benches.items():
            for (case, method), by_dev in pivot_records(bd.get("records", [])).items():
                rows.append([name, case, method] + [_fmt_value(*by_dev[d]) if d in by_dev else "-" for d in ("cuda", "cpu")]
                            + [by_dev.get("note", "")])
            if bd.get("timed_out") or bd.get("rc"):
                rows.append([name, "(run)", "cut at the time limit" if bd.get("timed_out") else f"exit {bd['rc']}",
                             "", "", ""])
        section("Benchmark figures (GPU beside CPU, same inputs)",
                [_md_table(["bench", "case", "method", "cuda", "cpu", "note"], rows)])
    return "\n".join(lines) + "\n"


def print_summary(report):
    def table(headers, rows):
        widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        for r in rows:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))

    env = report.get("env", {})
    print("\n== partdist gpu-check: " + ", ".join(
        str(x) for x in (env.get("gpu") or "no GPU", f"driver {env.get('driver', '-')}", f"torch {env.get('torch', '-')}",
                         f"CUDA {env.get('torch_cuda', '-')}") if x))
    table(["stage", "status", "time", "summary"], stage_rows(report))
    tr = target_rows(report)
    if tr:
        print()
        table(["GPU target", "measured", "goal", "verdict"], tr)


# ----------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", default="all",
                    help="build, test, sanitize, bench (comma-separated) or all [make: STAGE=]")
    ap.add_argument("--out", default="gpu-report", help="report directory [make: OUT=]")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the build, tests and benchmarks")
    ap.add_argument("--allow-cpu", action="store_true", default=False,
                    help="no GPU is a warning, not a failure [make: ALLOW_CPU=1]")
    ap.add_argument("--dry-run", action="store_true", default=False,
                    help="--allow-cpu + tiny sizes and a short test selection [make: DRYRUN=1]")
    ap.add_argument("--stage-timeout", type=float, default=470.0,
                    help="seconds per stage (default 470) [make: STAGE_TIMEOUT=]")
    ap.add_argument("--total-timeout", type=float, default=None,
                    help="seconds for the whole command: the stages share it (each at most --stage-timeout), "
                         "e.g. 560 where one command may run 10 minutes [make: TOTAL_TIMEOUT=]")
    ap.add_argument("--test-timeout", type=float, default=300, help="per-test limit with pytest-timeout")
    ap.add_argument("--tests", default=None,
                    help="pytest paths and selection, one string, e.g. 'tests/ops -k dmli' (default: tests) [make: TESTS=]")
    ap.add_argument("--pytest-args", default="", help="extra pytest arguments")
    ap.add_argument("--benches", default=",".join(BENCHES),
                    help="comma-separated of: " + ",".join(BENCHES) + " [make: BENCHES=]")
    ap.add_argument("--sanitize-tools", default=",".join(SANITIZER_TOOLS),
                    help="comma-separated compute-sanitizer tools [make: SANITIZE_TOOLS=]")
    ap.add_argument("--build-mode", default="inplace", choices=["inplace", "pip"],
                    help="setup.py build_ext --inplace (default) or pip install -e [make: BUILD_MODE=]")
    ap.add_argument("--pack", action="store_true", default=False,
                    help="at the end, move the logs into one logs-<stages>.tar.gz beside report.md / report.json "
                         "(a machine that returns only a few files of --out) [make: PACK=1]")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo every command's output")
    args = ap.parse_args(argv)
    stages = [s.strip() for s in args.stage.split(",") if s.strip()]
    if stages == ["all"]:
        stages = list(STAGES)
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        ap.error(f"--stage/STAGE: unknown stage(s) {bad or args.stage!r}; use one or more of {', '.join(STAGES)} or all")
    args.stages = stages
    args.tests = shlex.split(args.tests) if args.tests else None
    args.benches = [b.strip() for b in args.benches.split(",") if b.strip()]
    bad = [b for b in args.benches if b not in BENCHES]
    if bad or not args.benches:
        ap.error(f"--benches/BENCHES: unknown benchmark(s) {bad}; use some of {', '.join(BENCHES)}")
    args.sanitize_tools = [t.strip() for t in args.sanitize_tools.split(",") if t.strip()]
    bad = [t for t in args.sanitize_tools if t not in SANITIZER_TOOLS]
    if bad or not args.sanitize_tools:
        ap.error(f"--sanitize-tools/SANITIZE_TOOLS: unknown tool(s) {bad}; use some of {', '.join(SANITIZER_TOOLS)}")
    if args.stage_timeout < 60:
        ap.error("--stage-timeout/STAGE_TIMEOUT: at least 60 seconds")
    if args.total_timeout is not None and args.total_timeout < 60:
        ap.error("--total-timeout/TOTAL_TIMEOUT: at least 60 seconds")
    return args


def pack_logs(out, stages):
    """Move every file under ``out`` but the report (and earlier archives) into one
    ``logs-<stages>.tar.gz`` there; returns its path (None when there was nothing to pack)."""
    import tarfile

    keep = {"report.md", "report.json"}
    files = []
    for root, _, names in os.walk(out):
        for n in sorted(names):
            rel = os.path.relpath(os.path.join(root, n), out)
            if rel not in keep and not (root == out and n.startswith("logs-") and n.endswith(".tar.gz")):
                files.append(rel)
    if not files:
        return None
    path = os.path.join(out, "logs-%s.tar.gz" % "-".join(stages))
    with tarfile.open(path, "w:gz") as tar:
        for rel in files:
            tar.add(os.path.join(out, rel), arcname=rel)
    for rel in files:
        os.remove(os.path.join(out, rel))
    for root, dirs, _ in os.walk(out, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    return path


def main(argv=None):
    t_start = time.monotonic()
    args = parse_args(argv)
    check = Check(args)
    os.makedirs(check.out, exist_ok=True)
    env = check.collect_env()
    print(f"[gpu_check] {env.get('gpu') or 'no GPU'} (capability {env.get('capability', '-')}, driver "
          f"{env.get('driver', '-')}); torch {env.get('torch')} (CUDA {env.get('torch_cuda')}); nvcc: "
          f"{env.get('nvcc') or 'not found'}; python {env.get('python')}; report -> {check.out}", flush=True)
    if env.get("torch_error"):
        print(f"[gpu_check] cannot import torch with {args.python}: {env['torch_error']}", flush=True)
    check.write()
    t_end = None if args.total_timeout is None else t_start + args.total_timeout
    results = []
    for i, stage in enumerate(args.stages):
        budget = args.stage_timeout
        if t_end is not None:  # this stage's share of what is left of the command's time
            left = t_end - time.monotonic() - 15  # the report and the table at the end
            budget = stage_budget(args.stages[i:], left, args.stage_timeout)
            if budget < 30:
                check.report["stages"][stage] = {"status": TIMEOUT, "seconds": 0, "failures": [
                    f"not run: {max(0, left):.0f} s left of --total-timeout {args.total_timeout:.0f} s"],
                    "warnings": [], "details": {}}
                check.write()
                results.append(check.report["stages"][stage])
                continue
        results.append(check.run_stage(stage, budget))
    print_summary(check.report)
    print(f"\nreport: {os.path.join(check.out, 'report.md')} and report.json", flush=True)
    if args.pack:
        packed = pack_logs(check.out, args.stages)
        if packed:
            print(f"logs: {packed}", flush=True)
    return 0 if all(r["status"] in (PASS, WARN) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
