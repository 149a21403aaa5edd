"""`bench data check|make-lr`: what test sets a data root holds; MATLAB-exact LR generation.

    bench data check --data-root /path/to/benchmark
    bench data make-lr --hr datasets/MySet/HR --scale 4 --out datasets/MySet/LR_bicubic/X4
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect test sets, generate LR images",
                                 description="Test sets live under the data root in BasicSR layout "
                                             "(<root>/<Set>/HR, <root>/<Set>/LR_bicubic/X<s>).")
    sub = data.add_subparsers(dest="data_command", required=True)

    check = sub.add_parser("check", help="list the known test sets under the data root")
    check.add_argument("--data-root", type=Path, default=None,
                       help="test-set root (default: $BENCH_DATA_ROOT, else <repo>/datasets)")
    check.set_defaults(func=run_check)

    make = sub.add_parser("make-lr", help="write MATLAB-bicubic LR images (<name>x<s>.png) of a folder of HR images")
    make.add_argument("--hr", type=Path, required=True, metavar="DIR", help="folder of HR images")
    make.add_argument("--scale", type=int, required=True, help="downscaling factor (2, 3, 4)")
    make.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    make.set_defaults(func=run_make_lr)


def _scales(values: list[int]) -> str:
    return ", ".join(f"x{s}" for s in values) or "-"


def run_check(args: argparse.Namespace) -> int:
    from bench.data.check import check_data_root
    from bench.data.paths import resolve_data_root

    root = resolve_data_root(args.data_root)
    rows = [[s.name, s.description, s.found if s.expected is None else f"{s.found}/{s.expected}",
             _scales(s.official_scales), _scales(s.generated_scales), s.folder or "-"]
            for s in check_data_root(root)]
    print(f"data root: {root}")
    print(tabulate(rows, headers=["dataset", "status", "images", "LR (official)", "LR (generated)", "folder"]))
    print("missing LR scales are generated on first use with the MATLAB-exact bicubic (bench data make-lr)")
    return 0


def run_make_lr(args: argparse.Namespace) -> int:
    from bench.data.lr import make_lr_folder

    written = make_lr_folder(args.hr, args.scale, args.out)
    print(f"wrote {len(written)} LR images (x{args.scale}, MATLAB-exact bicubic) to {args.out}")
    return 0
