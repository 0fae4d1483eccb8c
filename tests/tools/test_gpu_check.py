"""CPU tests of tools/gpu_check.py (``make gpu-check``): the skip detection, the verdicts, the
sanitizer-log parsing, the report, the time limits, and the benchmarks' result files. No GPU
needed; the GPU run itself is what the script is for."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpu_check as G  # noqa: E402


def _load_bench_common():
    spec = importlib.util.spec_from_file_location("bench_common", os.path.join(ROOT, "benchmarks", "common.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    "nodeid, markers, reasons, want",
    [
        ("tests/test_dmli.py::test_forward", ("cuda",), (), True),
        ("tests/test_dmli.py::test_forward", ("parametrize",), ("needs a CUDA device",), True),
        ("tests/test_dmli.py::test_matches_cpu[cuda]", (), (), True),
        ("tests/test_dmli.py::test_matches_cpu[cuda-float32]", (), (), True),
        ("tests/test_dmli.py::test_backward_cuda", (), (), True),
        ("tests/test_dmli.py::test_cuda_matches_cpu[float32]", (), (), True),
        ("tests/test_x.py::test_gpu_large", (), (), True),
        ("tests/test_x.py::test_grad[float64-cuda:0]", (), (), True),
        ("tests/test_x.py::TestOps::test_grad[cuda]", (), (), True),
        ("tests/test_dmli.py::test_matches_cpu[cpu]", (), (), False),
        ("tests/test_dmli.py::test_forward", ("slow",), ("needs /proc",), False),
        # CPU tests that merely talk about CUDA in their names are not CUDA tests
        ("tests/test_cudaish.py::test_barracuda_name", (), (), False),
        ("tests/tools/test_gpu_check.py::test_is_cuda_test[x]", (), (), False),
        ("tests/tools/test_gpu_check.py::test_main_without_gpu_fails", (), (), False),
        ("tests/test_x.py::test_emulated_cuda_kernels_match_cpu", (), (), False),
    ],
    ids=lambda v: None if not isinstance(v, str) else v.rsplit("::", 1)[-1].replace("cuda", "CU").replace("gpu", "GP"),
)  # ids without 'cuda': these CPU tests must not look like CUDA tests themselves
def test_is_cuda_test(nodeid, markers, reasons, want):
    assert G.is_cuda_test(nodeid, markers, reasons) is want


def _rec(nodeid, outcome="passed", cuda=False, reason=""):
    return {"nodeid": nodeid, "outcome": outcome, "cuda": cuda, "reason": reason}


def test_analyze_all_cuda_tests_ran_passes():
    recs = [_rec("a::t1"), _rec("a::t2[cuda]", cuda=True)]
    a = G.analyze_tests(recs, cuda_available=True, pytest_rc=0)
    assert a["status"] == G.PASS and a["failures"] == [] and a["cuda_tests_passed"] == 1


@pytest.mark.parametrize("by", ["marker", "reason"])
def test_analyze_fails_on_a_skipped_cuda_test(by):
    skipped = (_rec("a::t3", "skipped", cuda=True, reason="whatever") if by == "marker"
               else _rec("a::t3", "skipped", cuda=False, reason="needs a CUDA device"))
    recs = [_rec("a::t1"), _rec("a::t2", cuda=True), skipped]
    a = G.analyze_tests(recs, cuda_available=True, pytest_rc=0)
    assert a["status"] == G.FAIL
    assert any("1 CUDA test(s) skipped" in f for f in a["failures"])
    assert [s["nodeid"] for s in a["cuda_skipped"]] == ["a::t3"]


def test_analyze_multi_gpu_skips_on_one_gpu_are_warnings():
    src = open(os.path.join(ROOT, "tests", "test_gpu_user_conditions.py")).read()
    assert f'TWO_GPUS = "{G.MULTI_GPU_REASON}' in src  # the reason the 2-GPU tests skip with
    reason = G.MULTI_GPU_REASON + " (one op on cuda:1 while cuda:0 is current)"
    recs = [_rec("a::t1"), _rec("a::t2", cuda=True), _rec("a::t3", "skipped", cuda=True, reason=reason)]
    a = G.analyze_tests(recs, cuda_available=True, pytest_rc=0)
    assert a["status"] == G.WARN and a["cuda_skipped"] == []
    assert any("1 multi-GPU test(s) skipped" in w for w in a["warnings"])


def test_analyze_fails_without_cuda_and_without_cuda_tests():
    a = G.analyze_tests([_rec("a::t1")], cuda_available=False, pytest_rc=0)
    assert a["status"] == G.FAIL
    assert any("is_available() is False" in f for f in a["failures"])
    assert any("no CUDA test passed" in f for f in a["failures"])


def test_analyze_allow_cpu_turns_cuda_problems_into_warnings():
    recs = [_rec("a::t1"), _rec("a::t2", "skipped", cuda=True, reason="needs a CUDA device")]
    a = G.analyze_tests(recs, cuda_available=False, allow_cpu=True, pytest_rc=0)
    assert a["status"] == G.WARN and a["failures"] == []
    assert any("CUDA test(s) skipped" in w for w in a["warnings"])


def test_analyze_other_skips_warn_and_failures_fail():
    recs = [_rec("a::t1", cuda=True), _rec("a::t2", "skipped", reason="gloo is not available")]
    a = G.analyze_tests(recs, cuda_available=True, pytest_rc=0)
    assert a["status"] == G.WARN and a["other_skipped"][0]["reason"] == "gloo is not available"
    recs.append(_rec("a::t4", "failed", reason="AssertionError: x"))
    a = G.analyze_tests(recs, cuda_available=True, pytest_rc=1)
    assert a["status"] == G.FAIL and any("a::t4" in f for f in a["failures"])


def test_analyze_unexplained_exit_status_timeout_and_empty_run():
    recs = [_rec("a::t1", cuda=True)]
    assert G.analyze_tests(recs, True, pytest_rc=2)["status"] == G.FAIL  # e.g. interrupted / usage error
    a = G.analyze_tests(recs, True, pytest_rc=-15, timed_out=True)
    assert a["status"] == G.TIMEOUT
    assert G.analyze_tests([], True, pytest_rc=5)["status"] == G.FAIL


# ------------------------------------------------------------------------------------------ the pytest plugin
def test_plugin_records_outcomes_and_cuda_flags(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    cuda: needs a GPU\n")
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest
        def test_plain():
            pass
        @pytest.mark.cuda
        @pytest.mark.skipif(True, reason="no device here")
        def test_marked():
            pass
        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_reason():
            pass
        @pytest.mark.parametrize("device", ["cpu", "cuda"])
        def test_param(device):
            if device == "cuda":
                pytest.skip("CUDA not available")
        def test_fails():
            assert 1 == 2
        @pytest.mark.xfail(reason="known")
        def test_xfail():
            assert 0
    """))
    out = tmp_path / "records.json"
    env = dict(os.environ, GPU_CHECK_PYTEST_JSON=str(out),
               PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tools"), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "gpu_check", "-p", "no:cacheprovider",
                        f"--junitxml={tmp_path / 'junit.xml'}", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr  # test_fails
    data = json.loads(out.read_text())
    recs = {x["nodeid"].split("::")[-1]: x for x in data["records"]}
    assert recs["test_plain"]["outcome"] == "passed" and not recs["test_plain"]["cuda"]
    assert recs["test_marked"]["outcome"] == "skipped" and recs["test_marked"]["cuda"]
    assert recs["test_reason"]["cuda"] and recs["test_reason"]["reason"] == "needs a CUDA device"
    assert recs["test_param[cuda]"]["cuda"] and recs["test_param[cuda]"]["outcome"] == "skipped"
    assert not recs["test_param[cpu]"]["cuda"] and recs["test_param[cpu]"]["outcome"] == "passed"
    assert recs["test_fails"]["outcome"] == "failed"
    assert recs["test_xfail"]["outcome"] == "xfailed"
    a = G.analyze_tests(data["records"], data["cuda_available"], pytest_rc=r.returncode)
    assert a["status"] == G.FAIL and len(a["cuda_skipped"]) == 3
    # the junit fallback sees the same skips and flags
    j = {x["nodeid"].split("::")[-1]: x for x in G.records_from_junit(str(tmp_path / "junit.xml"))}
    assert j["test_reason"]["outcome"] == "skipped" and j["test_reason"]["cuda"]
    assert j["test_param[cuda]"]["cuda"] and not j["test_plain"]["cuda"]
    assert j["test_fails"]["outcome"] == "failed"


# ------------------------------------------------------------------------------------------ sanitizer logs
MEMCHECK_OURS = """\
========= COMPUTE-SANITIZER
ok   dmli [float32]
========= Invalid __global__ read of size 4 bytes
=========     at void partdist::dmli::(anonymous namespace)::forward_kernel<float>(partdist::dmli::PairLayout, int, bool, const T1 *, T1 *)+0x1f0
=========     by thread (3,0,0) in block (0,0,0)
=========     Address 0x7f00 is out of bounds
=========     Saved host backtrace up to driver entry point at kernel launch time
=========     Host Frame: at::native::foo in libtorch_cuda.so
=========
========= Uninitialized __global__ memory read of size 4 bytes
=========     at void at::native::vectorized_elementwise_kernel<4, at::native::AbsFunctor<float>>(int, T2, T3)+0x80
=========     by thread (0,0,0) in block (0,0,0)
=========     Saved host backtrace up to driver entry point at kernel launch time
=========     Host Frame: partdist::dmli::launch in _C.so
=========
SANITIZE-OPS: 40/40 cases passed
========= ERROR SUMMARY: 2 errors
"""


def test_parse_sanitizer_log_splits_ours_from_others():
    p = G.parse_sanitizer_log(MEMCHECK_OURS)
    assert p["summary_errors"] == 2
    assert len(p["partdist"]) == 1 and "Invalid __global__ read" in p["partdist"][0]
    assert "forward_kernel" in p["partdist"][0]
    # a host frame naming partdist does not make a torch kernel's error ours
    assert len(p["other"]) == 1 and "AbsFunctor" in p["other"][0]


def test_parse_sanitizer_log_clean_and_racecheck():
    clean = "========= COMPUTE-SANITIZER\nSANITIZE-OPS: 3/3 cases passed\n========= ERROR SUMMARY: 0 errors\n"
    p = G.parse_sanitizer_log(clean)
    assert p == {"summary_errors": 0, "partdist": [], "other": []}
    race = ("========= Error: Race reported between Write access at partdist::mining::forward_kernel<float>+0x10\n"
            "=========     and Read access at partdist::mining::forward_kernel<float>+0x30 [4 hazards]\n"
            "=========\n========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)\n")
    p = G.parse_sanitizer_log(race)
    assert p["summary_errors"] == 1 and len(p["partdist"]) == 1 and not p["other"]


# ------------------------------------------------------------------------------------------ running, report
def test_split_budget_gives_the_rest_to_later_commands():
    assert G.split_budget(100, [1, 1, 2]) == 25
    assert G.split_budget(100, [4]) == 100
    # a 10-minute command for all four stages: each gets its weighted share, capped per stage
    w = G.STAGE_WEIGHTS
    assert G.stage_budget(list(G.STAGES), 520, 470) == pytest.approx(520 * w["build"] / sum(w.values()))
    assert G.stage_budget(["bench"], 520, 470) == 470
    assert G.stage_budget(["test", "bench"], -5, 470) == 0


def test_run_logged_kills_a_command_past_its_limit(tmp_path):
    t0 = time.monotonic()
    r = G.run_logged(["sh", "-c", "echo started; sleep 60; echo never"], str(tmp_path / "x.log"), timeout=1.5)
    assert r.timed_out and time.monotonic() - t0 < 30
    log = (tmp_path / "x.log").read_text()
    assert "\nstarted\n" in log and "\nnever" not in log and "killed after" in log
    r = G.run_logged([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"], str(tmp_path / "y.log"), 60)
    assert (r.rc, r.timed_out) == (3, False) and "hi" in r.tail
    r = G.run_logged(["/nonexistent/tool"], str(tmp_path / "z.log"), 5)
    assert r.rc == 127


def test_report_markdown_and_summary_rows():
    report = {
        "env": {"gpu": "NVIDIA H100", "driver": "570.1", "torch": "2.11.0", "torch_cuda": "13.0", "cuda_available": True},
        "stages": {
            "test": {"status": G.FAIL, "seconds": 61.0, "failures": ["1 CUDA test(s) skipped (1x 'needs a CUDA device')"],
                     "warnings": [], "details": {"counts": {"passed": 10, "skipped": 1}, "cuda_tests_passed": 4,
                                                 "cuda_skipped": [{"nodeid": "t::x", "reason": "needs a CUDA device"}],
                                                 "tests": ["tests"]}},
            "bench": {"status": G.PASS, "seconds": 300.0, "failures": [], "warnings": [], "details": {"benches": {
                "dmli": {"rc": 0, "timed_out": False, "records": [
                    {"case": "(a)", "device": "cuda", "method": "partdist", "value": 0.0001, "unit": "s", "note": ""},
                    {"case": "(a)", "device": "cpu", "method": "partdist", "value": 0.0005, "unit": "s", "note": ""}]}}},
                "targets": [{"name": "train >= 30x", "value": 41.0, "limit": 30.0, "op": ">=", "unit": "x", "met": True},
                            {"name": "rerank < 5 s", "value": None, "limit": 5.0, "op": "<", "unit": "s", "met": None}]},
        },
    }
    md = G.render_markdown(report)
    assert "NVIDIA H100" in md and "## Failures" in md and "t::x" in md
    assert "| train >= 30x | 41x | >= 30x | met |" in md and "not measured" in md
    assert "| dmli | (a) | partdist | 0.1 ms | 0.5 ms |" in md  # the GPU figure beside the CPU one
    rows = G.stage_rows(report)
    assert rows[0][0] == "test" and "4 CUDA passed, 1 CUDA skipped" in rows[0][3]


def test_bad_stage_and_bench_names_are_clear_errors(capsys):
    for argv, word in ((["--stage", "buld"], "--stage"), (["--benches", "dmli,foo"], "--benches"),
                       (["--sanitize-tools", "memchek"], "--sanitize-tools")):
        with pytest.raises(SystemExit) as e:
            G.parse_args(argv)
        assert e.value.code == 2 and word in capsys.readouterr().err
    assert G.parse_args(["--stage", "all"]).stages == list(G.STAGES)
    assert G.parse_args(["--stage", "test,bench"]).stages == ["test", "bench"]


@pytest.mark.slow  # collects the environment in a fresh interpreter
def test_main_without_gpu_fails_the_stage_and_writes_the_report(tmp_path, monkeypatch):
    """No --allow-cpu and no GPU (hidden with CUDA_VISIBLE_DEVICES where there is one): the
    sanitize stage fails at once, and the report says why."""
    pytest.importorskip("torch")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc = G.main(["--stage", "sanitize", "--out", str(tmp_path), "--python", sys.executable])
    assert rc == 1
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["stages"]["sanitize"]["status"] == G.FAIL
    assert "no GPU" in rep["stages"]["sanitize"]["failures"][0]
    assert "No GPU was available" in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------------------------------ benchmark results
def test_bench_results_targets_and_file(tmp_path):
    pytest.importorskip("torch")
    C = _load_bench_common()
    path = str(tmp_path / "r.json")
    res = C.Results(path, "x")
    res.target("fast", 0.25, "<", unit="s")
    res.target("ratio", 30.0, ">=", unit="x")
    res.add("case", "cuda", "partdist", 0.1)
    assert json.loads(open(path).read())["records"][0]["value"] == 0.1  # written at once
    assert res.measure("fast", 0.3, "cpu") is None  # a CPU figure does not measure a GPU target
    assert res.measure("fast", 0.3, "cuda") is False
    assert res.measure("ratio", 31.0, "cuda:0") is True
    res.finish()
    data = json.loads(open(path).read())
    assert {t["name"]: t["met"] for t in data["targets"]} == {"fast": False, "ratio": True}
    with pytest.raises(ValueError):
        res.target("bad", 1, "==")


def test_bench_device_flag_is_a_clear_error_without_a_gpu():
    import argparse

    torch = pytest.importorskip("torch")
    C = _load_bench_common()
    ap = argparse.ArgumentParser()
    C.add_device_arg(ap)
    args = ap.parse_args(["--device", "cpu", "--device", "all"])
    want = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    assert C.resolve_devices(ap, args.device) == want
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            C.resolve_devices(ap, ["cuda"])


def test_docs_and_makefile_document_every_stage():
    sec = open(os.path.join(ROOT, "docs", "gpu-check.md")).read()
    for stage in G.STAGES:
        assert f"| `{stage}` |" in sec
    make = open(os.path.join(ROOT, "Makefile")).read()
    assert "gpu-check:" in make and "tools/gpu_check.py --stage $(STAGE) --out $(OUT)" in make


FAKE_SANITIZER = r'''#!PYTHON
"""A stand-in for compute-sanitizer: runs the op script on the CPU (one case) and prints what the
real tool prints; racecheck 'finds' a race in a partdist kernel, initcheck one in a torch kernel."""
import subprocess, sys
args = sys.argv[1:]
tool = args[args.index("--tool") + 1]
i = next(k for k, a in enumerate(args) if a.endswith("gpu_sanitize_ops.py")) - 1
cmd = [("cpu" if a == "cuda" else a) for a in args[i:]] + ["--only", "dmli_path"]
print("========= COMPUTE-SANITIZER", flush=True)
rc = subprocess.call(cmd)
errors = 0
if tool == "racecheck":
    print("========= Error: Race reported between Write access at partdist::dmli::forward_kernel<float>+0x10")
    print("=========     and Read access at partdist::dmli::forward_kernel<float>+0x30 [4 hazards]")
    print("=========")
    errors = 1
if tool == "initcheck":
    print("========= Uninitialized __global__ memory read of size 4 bytes")
    print("=========     at void at::native::reduce_kernel<512, 1>(T1)+0x80")
    print("=========")
    errors = 1
print(f"========= ERROR SUMMARY: {errors} error{'s' if errors != 1 else ''}")
sys.exit(86 if errors else rc)
'''


@pytest.mark.slow
def test_sanitize_stage_runs_each_tool_and_attributes_errors(tmp_path, monkeypatch):
    """The GPU path of the sanitize stage, with a fake compute-sanitizer on PATH: one process per
    tool, a partdist error fails the stage, an error in a torch kernel alone is a warning."""
    pytest.importorskip("torch")
    fake = tmp_path / "bin" / "compute-sanitizer"
    fake.parent.mkdir()
    fake.write_text(FAKE_SANITIZER.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent) + os.pathsep + os.environ["PATH"])
    args = G.parse_args(["--stage", "sanitize", "--out", str(tmp_path / "out"), "--python", sys.executable,
                         "--sanitize-tools", "memcheck,racecheck,initcheck"])
    check = G.Check(args)
    check.env_info = {"cuda_available": True}
    res = check.stage_sanitize(300)
    tools = res["details"]["tools"]
    assert list(tools) == ["memcheck", "racecheck", "initcheck"]
    assert tools["memcheck"]["errors"] == 0 and tools["memcheck"]["ops"]["passed"] == tools["memcheck"]["ops"]["total"] == 2
    assert len(tools["racecheck"]["partdist_errors"]) == 1 and not tools["racecheck"]["other_errors"]
    assert len(tools["initcheck"]["other_errors"]) == 1 and not tools["initcheck"]["partdist_errors"]
    assert res["status"] == G.FAIL
    assert len(res["failures"]) == 1 and res["failures"][0].startswith("racecheck: 1 error(s) in partdist kernels")
    assert any(w.startswith("initcheck: 1 error(s) outside partdist") for w in res["warnings"])
    assert (tmp_path / "out" / "sanitize" / "racecheck.log").exists()


def test_sanitize_op_script_covers_every_partdist_op():
    """Every registered partdist op (its backward through its forward's case) has a case in
    tools/gpu_sanitize_ops.py, so a new op cannot escape the sanitizer stage unnoticed."""
    torch = pytest.importorskip("torch")
    import gpu_sanitize_ops

    import partdist  # noqa: F401  (registers the ops)

    names = [c[0] for c in gpu_sanitize_ops.cases()]
    # the _*_tile_plan ops are host-side test hooks of the tile planning: they launch no kernel.
    # Ops with a CUDA kernel have a twin in partdist_cuda_emulated (csrc/common/registration.h
    # registers both at once); the others (rank_metrics) run no device code to sanitize.
    # A backward op counts as its forward's (X_backward -> X, X_backward_Y -> X_fwd_Y).
    names_all = torch._C._dispatch_get_all_op_names()

    def forward_of(name):
        return name.replace("_backward_", "_fwd_") if "_backward_" in name else name.replace("_backward", "")

    on_device = {forward_of(n.split("::", 1)[1]) for n in names_all
                 if n.startswith("partdist_cuda_emulated::")}
    assert {"dmli", "local_dist", "hard_example_mining", "neighborhood_diff", "part_dist", "dsr_dist"} <= on_device
    ops = sorted({forward_of(n.split("::", 1)[1]) for n in names_all
                  if n.startswith("partdist::") and not n.endswith("_tile_plan")} & on_device)
    assert ops, "no partdist op registered"
    missing = [op for op in ops if not any(name == op or name.startswith(op + ",") for name in names)]
    assert not missing, f"ops without a case in tools/gpu_sanitize_ops.py: {missing}"


def test_cpu_only_ops_table_matches_the_registrations():
    """partdist.ops.CPU_ONLY_OPS (ops with no CUDA kernel by design, which gpu_check's build
    stage accepts) names real ops that indeed have no device twin, and every other op with a
    CPU kernel has one: a new op without a CUDA kernel must be added to the table with its
    reason, or the build stage fails on the GPU machine."""
    torch = pytest.importorskip("torch")
    from partdist.ops import CPU_ONLY_OPS

    names = set(torch._C._dispatch_get_all_op_names())
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    twins = {n.split("::", 1)[1] for n in names if n.startswith("partdist_cuda_emulated::")}
    cpu_ops = {n for n in names if n.startswith("partdist::") and has(n, "CPU")}
    for op, why in CPU_ONLY_OPS.items():
        assert op in cpu_ops and why, op
        assert op.split("::", 1)[1] not in twins, f"{op} has a device twin: remove it from CPU_ONLY_OPS"
    without_twin = {n for n in cpu_ops if n.split("::", 1)[1] not in twins}
    assert without_twin == set(CPU_ONLY_OPS)


def test_pack_logs_leaves_the_report_and_one_archive(tmp_path):
    import tarfile

    for rel, text in [("report.md", "r"), ("report.json", "{}"), ("env.log", "e"), ("test/pytest.log", "p"),
                      ("bench/dmli.json", "{}"), ("bench/sub/deep.log", "d")]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    path = G.pack_logs(str(tmp_path), ["test", "bench"])
    assert path == str(tmp_path / "logs-test-bench.tar.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs-test-bench.tar.gz", "report.json", "report.md"]
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["bench/dmli.json", "bench/sub/deep.log", "env.log", "test/pytest.log"]
        assert tar.extractfile("test/pytest.log").read() == b"p"
    # a second command into the same folder: its new logs only, the first archive kept
    (tmp_path / "sanitize").mkdir()
    (tmp_path / "sanitize" / "memcheck.log").write_text("m")
    path2 = G.pack_logs(str(tmp_path), ["sanitize"])
    with tarfile.open(path2) as tar:
        assert tar.getnames() == ["sanitize/memcheck.log"]
    assert (tmp_path / "logs-test-bench.tar.gz").exists()
    assert G.pack_logs(str(tmp_path), ["bench"]) is None
