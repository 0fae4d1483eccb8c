"""The documentation's examples run: every ```python block of README.md and docs/**/*.md is
executed (in a fresh namespace, in a temporary folder), the command lines of its ```bash blocks
use only flags the `partdist` command has, and the README stays one page.

A block preceded by ``<!-- skip-test: REASON -->`` is not executed (it needs data, a checkpoint
or a package that the tests do not have); the reason is required and such blocks are counted.
"""

import contextlib
import io
import pathlib
import re

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SKIP = re.compile(r"<!--\s*skip-test:\s*(\S.*?)\s*-->\s*$")
MAX_SKIPPED = 3  # each one is an example no test runs: keep them rare


def _blocks(lang):
    """(page, line, code, skip_reason) of every fenced block of language ``lang``."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) != lang:
                continue
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = SKIP.search(before)
            out.append((page, line, m.group(2), skip.group(1) if skip else None))
    return out


PY_BLOCKS = _blocks("python")


def _id(block):
    return f"{block[0].relative_to(ROOT)}:{block[1]}"


def _run(block, tmp_path, monkeypatch):
    page, line, code, _ = block
    monkeypatch.chdir(tmp_path)  # examples that write files (an index, a data set) write there
    torch.manual_seed(0)
    ns = {"__name__": "__docs_example__"}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), ns)
    return ns


def test_examples_are_found_and_few_are_skipped():
    assert len(PY_BLOCKS) >= 12, [_id(b) for b in PY_BLOCKS]
    pages = {b[0].name for b in PY_BLOCKS}
    assert {"README.md", "quickstart.md", "ops.md", "evaluation.md", "search.md"} <= pages
    skipped = [_id(b) for b in PY_BLOCKS if b[3] is not None]
    assert len(skipped) <= MAX_SKIPPED, skipped
    # a skip comment must sit right before a python block (not a stray one that skips nothing)
    for page in PAGES:
        for n, text_line in enumerate(page.read_text().splitlines(), 1):
            if "skip-test" in text_line:
                assert SKIP.search(text_line), f"{page.name}:{n}: write <!-- skip-test: REASON -->"
                assert any(b[0] == page and b[1] == n + 1 for b in PY_BLOCKS), (
                    f"{page.name}:{n}: a skip-test comment must be the line just before a ```python block"
                )


# examples that a test below runs and checks further (not run twice)
CHECKED = {
    ("README.md", "partdist.batch_local_dist(x, y)"),
    ("quickstart.md", "partdist.batch_local_dist(x, y)"),
    ("quickstart.md", "def aligned_triplet_loss"),
    ("evaluation.md", "re_ranking_features"),
    ("search.md", "GalleryIndex("),
}


def _checked(block):
    return any(block[0].name == page and marker in block[2] for page, marker in CHECKED)


@pytest.mark.parametrize("block", [b for b in PY_BLOCKS if b[3] is None and not _checked(b)], ids=_id)
def test_python_example_runs(block, tmp_path, monkeypatch):
    _run(block, tmp_path, monkeypatch)


def _block_on(page_name, marker):
    assert (page_name, marker) in CHECKED
    found = [b for b in PY_BLOCKS if b[0].name == page_name and marker in b[2]]
    assert len(found) == 1, (page_name, marker, [_id(b) for b in found])
    return found[0]


@pytest.mark.parametrize("page", ["README.md", "quickstart.md"])
def test_quickstart_does_what_it_says(page, tmp_path, monkeypatch):
    block = _block_on(page, "partdist.batch_local_dist(x, y)")
    assert len(block[2].strip().splitlines()) <= 12
    ns = _run(block, tmp_path, monkeypatch)
    assert ns["d"].shape == (32,) and ns["qg"].shape == (32, 32)
    assert ns["x"].grad is not None and torch.isfinite(ns["loss"].local_loss)
    # local_dist of the same pairs agrees with the aligned-pair op on the diagonal
    torch.testing.assert_close(ns["qg"].diagonal(), ns["d"].detach(), rtol=1e-5, atol=1e-5)


def test_drop_in_loss_example_backpropagates(tmp_path, monkeypatch):
    ns = _run(_block_on("quickstart.md", "def aligned_triplet_loss"), tmp_path, monkeypatch)
    g = torch.randn(16, 64, requires_grad=True)
    local = torch.randn(16, 8, 32, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(4)
    gl, ll = ns["aligned_triplet_loss"](g, labels, local)  # AlignedTripletLoss's argument order
    (gl + ll).backward()
    assert torch.isfinite(gl) and torch.isfinite(ll)
    assert local.grad.abs().sum() > 0 and g.grad.abs().sum() > 0


def test_market_scale_example_shapes(tmp_path, monkeypatch):
    ns = _run(_block_on("evaluation.md", "re_ranking_features"), tmp_path, monkeypatch)
    assert ns["d"].shape == (20, 150) and ns["rr"].shape == (20, 150)
    assert ns["vals"].shape == ns["idx"].shape == (20, 100)


def test_search_example_writes_a_loadable_index(tmp_path, monkeypatch):
    ns = _run(_block_on("search.md", "GalleryIndex("), tmp_path, monkeypatch)
    assert ns["exact"].ids.shape == ns["fast"].ids.shape == ns["rr"].ids.shape == (20, 10)
    assert 0.0 <= float(ns["mAP"]) <= 1.0
    loaded = ns["GalleryIndex"].load(str(tmp_path / "gallery.idx"))
    again = loaded.search(ns["q_global"], ns["q_local"], k=10)
    assert torch.equal(again.ids, ns["exact"].ids)


# --- command lines -------------------------------------------------------------------------

COMMANDS = ("demo", "train", "eval", "synthetic", "index", "search")
CMD_LINE = re.compile(r"(?:^|\s)(?:partdist|-m partdist\.cli)\s+(" + "|".join(COMMANDS) + r")\b(.*)")


def _documented_flags():
    """{command: {flag: where}} from the ```bash blocks (continuation lines joined)."""
    flags = {}
    for page, line, code, _ in _blocks("bash"):
        for n, cmd_line in enumerate(code.replace("\\\n", " ").splitlines()):
            m = CMD_LINE.search(cmd_line.split("#", 1)[0])
            if m:
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", m.group(2)):
                    flags.setdefault(m.group(1), {})[flag] = f"{page.relative_to(ROOT)}:{line + n + 1}"
    return flags


def _help(command):
    from partdist.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return out.getvalue()


def test_documented_command_lines_use_existing_flags():
    flags = _documented_flags()
    assert {"train", "eval", "search", "index"} <= set(flags), flags
    for command, used in flags.items():
        text = _help(command)
        known = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        unknown = {f: where for f, where in used.items() if f not in known}
        assert not unknown, f"partdist {command}: flags not in --help: {unknown}"


def test_flags_named_in_the_cli_pages_exist():
    """Every `--flag` in inline code of the pages about the command line is a flag of some command."""
    known = set()
    for command in COMMANDS:
        known |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", _help(command)))
    named = {}
    for name in ("training.md", "search.md", "evaluation.md", "models.md", "data.md"):
        for span in re.findall(r"`([^`\n]+)`", (ROOT / "docs" / name).read_text()):
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span):
                named.setdefault(flag, name)
    assert len(named) >= 20, named
    unknown = {f: page for f, page in named.items() if f not in known}
    assert not unknown, f"flags that no partdist command has: {unknown}"


def test_readme_is_one_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)


def test_readme_links_resolve():
    """The README is read on its own (the site checks the links of docs/ with mkdocs --strict)."""
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 10, local
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), f"README.md links to {link}, which does not exist"
        if anchor and target.suffix == ".md":
            headings = re.findall(r"^#+\s+(.*)$", target.read_text(), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README.md links to {link}: no such heading in {path}"
