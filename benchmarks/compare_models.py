"""Train every reference model (partdist.models.MODEL_SPECS) on the same synthetic data with the
same small budget, evaluate each with its own distance, and write one table.

    .venv/bin/python benchmarks/compare_models.py --out runs/compare

For each setting (``default`` and ``hard``, see :class:`partdist.data.SyntheticReID`) and each
model: rank-1, mAP, mINP (Market-1501 protocol), training wall time, test-time cost per query
(query features + distances to the whole gallery, gallery features precomputed), parameters.
Writes ``<out>/compare.json``, ``<out>/compare.md`` and ``<out>/compare.png`` (mAP bars,
both settings), beside the Market-1501 figures published in the papers where we are sure
of them (the others are left blank; see ``REPORTED``).

Budget (default): 64 ids (32 for training) x 4 cameras x 2 images of 64 x 32 pixels,
``compact`` backbone with last stride 1 (a 4 x 2 map), Adam lr 1e-3 (warm-up 1 epoch, x0.1
after 75 % of the epochs), P x K = 8 x 4, ``--epochs`` x ``--iters`` iterations, the same seed
for every model, one CPU thread per process (on a shared, loaded machine two threads were ~10x
slower than one). This is a smoke-scale comparison, far from the papers' schedules: it ranks
ideas under a tiny budget on toy data, not the systems at their best.

Each finished model's result is kept in ``<out>/runs/<setting>/<model>/result.json``; a rerun
with the same budget reuses them (so an interrupted comparison resumes, and two processes may
run the two settings side by side: ``--settings default`` and ``--settings hard`` with the same
``--out``, then one run with both settings assembles the table). Results of another budget are
never overwritten unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from partdist.data import SyntheticReID, market1501, part_annotations  # noqa: E402
from partdist.eval import evaluate_model  # noqa: E402
from partdist.models import MODEL_SPECS  # noqa: E402
from partdist.train import TrainConfig, Trainer, make_batches  # noqa: E402

#: Market-1501 single-query figures (rank-1, mAP, %) as published in the papers, without
#: re-ranking; None where we could not check the paper's number here (left blank on purpose).
REPORTED = {
    "pcb": (92.3, 77.4, "Sun et al., ECCV 2018, Table 2 (PCB, ResNet-50)"),
    "pcb_rpp": (93.8, 81.6, "Sun et al., ECCV 2018, Table 2 (PCB+RPP)"),
}


def _params(model):
    return sum(p.numel() for p in model.parameters())


def run_setting(setting, args, log):
    root = os.path.join(args.out, f"data_{setting}")
    SyntheticReID(root, num_ids=args.ids, num_cams=4, imgs_per_id_cam=args.per_cam, height=args.height,
                  width=args.width, seed=args.seed, setting=setting).generate()
    splits = market1501(root)
    num_classes = len({p for _, p, _ in splits.train})
    log(f"[{setting}] train {len(splits.train)} / query {len(splits.query)} / gallery {len(splits.gallery)} images")
    rows = {}
    budget = _budget(args)
    for name in args.models:
        spec = MODEL_SPECS[name]
        run_dir = os.path.join(args.out, "runs", setting, name)
        cached = os.path.join(run_dir, "result.json")
        if os.path.exists(cached):
            with open(cached) as f:
                prev = json.load(f)
            if prev.get("budget") == budget and not args.overwrite:
                rows[name] = prev["row"]
                log(f"[{setting}] {name:13s} (reused {cached})")
                continue
            if not args.overwrite:
                sys.exit(f"compare_models: {cached} holds a result of another budget; choose another --out or "
                         "pass --overwrite")
        cfg = TrainConfig(model=name, backbone="compact", last_stride=1, height=args.height, width=args.width,
                          p=8, k=4,
                          epochs=args.epochs, iters_per_epoch=args.iters, lr=1e-3, warmup_epochs=1,
                          milestones=[max(1, int(args.epochs * 0.75))], seed=args.seed, progress=False,
                          out=run_dir)
        parts = part_annotations(root, splits.train, spec.needs, name) if spec.needs else None
        t0 = time.perf_counter()
        tr = Trainer(cfg, num_classes, make_batches(splits.train, cfg, parts=parts), log=lambda *a: None)
        tr.fit()
        train_s = time.perf_counter() - t0
        qp = part_annotations(root, splits.query, spec.needs) if spec.needs else None
        gp = part_annotations(root, splits.gallery, spec.needs) if spec.needs else None
        res, _ = evaluate_model(tr.model, splits.query, splits.gallery, args.height, args.width, name=name,
                                distance=spec.distance, q_parts=qp, g_parts=gp)
        (dist, r), = res.items()
        rows[name] = {"system": spec.system, "family": spec.family, "distance": dist, "rank1": r["rank1"],
                      "mAP": r["mAP"], "mINP": r["mINP"], "train_s": round(train_s, 1),
                      "ms_per_query": round(r["ms_per_query"], 3), "params": _params(tr.model),
                      "final_loss": tr.history[-1]["loss"]}
        with open(cached, "w") as f:
            json.dump({"budget": budget, "row": rows[name]}, f, indent=1)
        log(f"[{setting}] {name:13s} rank1 {100 * r['rank1']:5.1f} mAP {100 * r['mAP']:5.1f} "
            f"mINP {100 * r['mINP']:5.1f} train {train_s:6.1f} s  {r['ms_per_query']:.2f} ms/query")
    return {"rows": rows, "train": len(splits.train), "query": len(splits.query), "gallery": len(splits.gallery)}


def _budget(args):
    return {k: getattr(args, k) for k in ("ids", "per_cam", "height", "width", "epochs", "iters", "seed", "threads")}


def markdown(result):
    settings = list(result["settings"])
    head = ["model", "system", "family", "distance"]
    for s in settings:
        head += [f"{s} R1", f"{s} mAP", f"{s} mINP", f"{s} train s", f"{s} ms/query"]
    head += ["params", "Market-1501 R1 / mAP (paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = result["settings"][settings[0]]["rows"]
    for name, r0 in first.items():
        cells = [name, r0["system"], r0["family"], r0["distance"]]
        for s in settings:
            r = result["settings"][s]["rows"][name]
            cells += [f"{100 * r['rank1']:.1f}", f"{100 * r['mAP']:.1f}", f"{100 * r['mINP']:.1f}",
                      f"{r['train_s']:.0f}", f"{r['ms_per_query']:.2f}"]
        rep = REPORTED.get(name)
        cells += [f"{r0['params'] / 1e6:.2f} M", f"{rep[0]} / {rep[1]}" if rep else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(result["settings"])
    names = list(result["settings"][settings[0]]["rows"])
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(names)), 4))
    w = 0.8 / len(settings)
    for k, s in enumerate(settings):
        rows = result["settings"][s]["rows"]
        ax.bar([i + k * w for i in range(len(names))], [100 * rows[n]["mAP"] for n in names], w, label=f"{s} mAP")
    ax.set_xticks([i + w * (len(settings) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("mAP (%)")
    ax.set_title("Reference models on synthetic data (same small budget)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--models", nargs="*", default=list(MODEL_SPECS), choices=list(MODEL_SPECS))
    ap.add_argument("--settings", nargs="*", default=["default", "hard"], choices=["default", "hard"])
    ap.add_argument("--ids", type=int, default=64, help="identities (half for training)")
    ap.add_argument("--per-cam", type=int, default=2)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=12, help="iterations per epoch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    out_json = os.path.join(args.out, "compare.json")
    t0 = time.time()
    result = {"budget": _budget(args),
              "reported_market1501": {k: {"rank1": v[0], "mAP": v[1], "source": v[2]} for k, v in REPORTED.items()},
              "settings": {}}
    for s in args.settings:
        result["settings"][s] = run_setting(s, args, lambda m: print(m, flush=True))
    result["seconds"] = round(time.time() - t0, 1)
    table = markdown(result)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write(table + "\n")
    chart(result, os.path.join(args.out, "compare.png"))
    print(table)
    print(f"wrote {out_json}, compare.md and compare.png in {result['seconds']} s")


if __name__ == "__main__":
    main()
