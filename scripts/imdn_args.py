"""Command-line options of scripts/imdn_w8a8.py (the official IMDN checkpoints on the standard test sets)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_imdn_args(ap: argparse.ArgumentParser, default_out: Path) -> None:
    """Data, weights and output options: the official IMDN checkpoints on the standard test sets."""
    ap.add_argument("--data-root", required=True, type=Path, help="test sets in BasicSR layout")
    ap.add_argument("--train-dir", required=True, type=Path, help="HR training images for the calibration patches")
    ap.add_argument("--weights-dir", required=True, type=Path, help="folder with IMDN_x{2,3,4}.pth")
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--datasets", nargs="+", default=["Set5", "Set14"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP contention on a shared CPU)")
