"""The demo over several seeds: ``partdist demo --seed S`` for each seed, then the mean and the
sample standard deviation of each trained figure across the seeds (the spread a single demo run
has: data, initialization and batch order all follow the seed).

    python benchmarks/demo_seeds.py --out runs/demo-seeds                  # seeds 0 1 2, ~6 min each
    python benchmarks/demo_seeds.py --out runs/demo-seeds --summarize      # the table of finished runs

Each seed's run is ``OUT/seed<S>`` (a finished one, with its ``results.json``, is reused, not
rerun); the table goes to stdout and ``OUT/summary.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

ROWS = ("global", "local (DMLI)", "global + DMLI", "global + DMLI, re-ranked")
METRICS = ("rank1", "mAP")


def mean_sd(values):
    n = len(values)
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return m, sd


def summarize(results: dict) -> dict:
    """``results``: seed -> the demo's results.json. Returns row -> metric -> (mean, sd, values),
    in percent."""
    out = {}
    for row in ROWS:
        out[row] = {}
        for metric in METRICS:
            vals = [100.0 * r["trained"][row][metric] for _, r in sorted(results.items())]
            m, sd = mean_sd(vals)
            out[row][metric] = {"mean": m, "sd": sd, "values": vals}
    return out


def table(summary: dict, seeds) -> str:
    head = "| trained, distance | rank-1 | mAP | " + " | ".join(f"seed {s} R1 / mAP" for s in seeds) + " |"
    lines = [head, "|" + "---|" * (3 + len(seeds))]
    for row, m in summary.items():
        r1, ap = m["rank1"], m["mAP"]
        per = " | ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(r1["values"], ap["values"]))
        lines.append(f"| {row} | {r1['mean']:.1f} ± {r1['sd']:.1f} | {ap['mean']:.1f} ± {ap['sd']:.1f} | {per} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder of the runs (OUT/seed<S>) and the summary")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (at least 2)")
    ap.add_argument("--summarize", action="store_true", help="only summarize the finished runs in --out")
    ap.add_argument("--partdist", default=None,
                    help="the partdist command (default: this Python's `-m partdist.cli`)")
    args = ap.parse_args(argv)
    if len(args.seeds) < 2 or len(set(args.seeds)) != len(args.seeds):
        ap.error("--seeds: give at least two different seeds (a standard deviation needs two runs)")
    cmd = args.partdist.split() if args.partdist else [sys.executable, "-m", "partdist.cli"]
    results = {}
    for s in args.seeds:
        run = os.path.join(args.out, f"seed{s}")
        path = os.path.join(run, "results.json")
        if not os.path.isfile(path):
            if args.summarize:
                ap.error(f"--summarize: {path} does not exist (run without --summarize first)")
            if os.path.exists(run):
                ap.error(f"--out: {run} exists without results.json (an unfinished demo): remove it or finish "
                         f"it with `partdist demo --out {run} --seed {s} --resume`")
            subprocess.run(cmd + ["demo", "--out", run, "--seed", str(s), "--progress", "lines"], check=True)
        with open(path) as f:
            results[s] = json.load(f)
    summary = summarize(results)
    text = table(summary, sorted(results))
    print(text)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"seeds": sorted(results), "percent": summary}, f, indent=1)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
