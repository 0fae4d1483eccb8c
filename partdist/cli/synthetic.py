"""``partdist synthetic``: write the synthetic data set in the Market-1501 layout."""

from __future__ import annotations

import os

from ._common import CLIError, _positive_int


def cmd_synthetic(args):
    from ..data import SyntheticReID

    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise CLIError(f"--out {args.out} is not empty; choose another --out or pass --overwrite")
    root = SyntheticReID(args.out, num_ids=args.ids, num_cams=args.cams, imgs_per_id_cam=args.per_cam,
                         height=args.height, width=args.width, seed=args.seed, setting=args.setting).generate()
    print(root)


def register_synthetic(sub):
    s = sub.add_parser("synthetic", help="write the synthetic set in the Market-1501 layout")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--ids", type=_positive_int, default=100, help="identities")
    s.add_argument("--cams", type=_positive_int, default=4, help="cameras")
    s.add_argument("--per-cam", type=_positive_int, default=2, help="images per identity and camera")
    s.add_argument("--height", type=_positive_int, default=256, help="image height")
    s.add_argument("--width", type=_positive_int, default=128, help="image width")
    s.add_argument("--seed", type=int, default=0, help="random seed")
    s.add_argument("--setting", choices=("default", "hard"), default="default",
                   help="hard: stronger camera shifts and scale, more occlusion, muted colours")
    s.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    s.set_defaults(fn=cmd_synthetic)
    return s
