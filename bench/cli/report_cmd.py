"""`bench table`, `bench plot`, `bench visual`: reports of a run's records.jsonl."""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def _add_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run name under --results-dir, or a run directory")
    parser.add_argument("--results-dir", type=Path, default=Path("results"))


def register(subparsers) -> None:
    table = subparsers.add_parser("table", help="Table-3-style PSNR/SSIM table of a run")
    _add_run(table)
    table.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    table.add_argument("--reference", type=Path, default=None, metavar="FILE.csv",
                       help="published numbers (columns method,scale,bits,dataset,psnr,ssim)")
    table.add_argument("--reference-mode", choices=["rows", "delta"], default="rows",
                       help="show published numbers as rows under ours (default) or as delta columns")
    table.add_argument("--output", type=Path, default=None, help="write to this file instead of stdout")
    table.set_defaults(func=table_command)

    plot = subparsers.add_parser("plot", help="PSNR-vs-bits, PSNR-vs-size and latency figures (PNG + PDF)")
    _add_run(plot)
    plot.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/figures)")
    plot.set_defaults(func=plot_command)

    visual = subparsers.add_parser("visual", help="strip of the same crop from HR, bicubic, FP and each method")
    _add_run(visual)
    visual.add_argument("--image", required=True, help="image name without extension (e.g. butterfly)")
    visual.add_argument("--crop", required=True, help="x,y,w,h in HR pixels")
    visual.add_argument("--dataset", default=None)
    visual.add_argument("--scale", type=int, default=None)
    visual.add_argument("--model", default=None)
    visual.add_argument("--data-root", type=Path, default=None,
                        help="test-set root (default: $BENCH_DATA_ROOT, else <repo>/datasets)")
    visual.add_argument("--device", default="cpu")
    visual.add_argument("--out", type=Path, default=None,
                        help="output file stem (default: <run>/figures/visual_<model>_x<s>_<dataset>_<image>)")
    visual.set_defaults(func=visual_command)


def _latest_records(run) -> list[dict]:
    from bench.runner.records import latest_by_key, read_records
    return list(latest_by_key(read_records(run.records)).values())


def table_command(args: argparse.Namespace) -> int:
    from bench.runner.rundir import find_run
    from bench.runner.tables import build_tables, load_reference, render

    run = find_run(args.run, args.results_dir)
    reference = load_reference(args.reference) if args.reference else None
    text = render(build_tables(_latest_records(run), reference, delta=args.reference_mode == "delta"), args.format)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def plot_command(args: argparse.Namespace) -> int:
    from bench.runner.plots import plot_run
    from bench.runner.rundir import find_run

    run = find_run(args.run, args.results_dir)
    paths = plot_run(_latest_records(run), args.out or run.path / "figures")
    for path in paths:
        print(path)
    if not paths:
        print(f"no successful cells in {run.records}: nothing to plot")
    return 0


def visual_command(args: argparse.Namespace) -> int:
    from bench.runner.rundir import find_run
    from bench.runner.visual import Crop, build_panels, save_strip

    run = find_run(args.run, args.results_dir)
    crop = Crop.parse(args.crop)
    data_root = args.data_root or (Path(os.environ["BENCH_DATA_ROOT"]) if os.environ.get("BENCH_DATA_ROOT") else None)
    strip = build_panels(run, args.image, crop, args.dataset, args.scale, args.model, data_root, args.device)
    stem = args.out or run.path / "figures" / f"{strip.stem}_{args.image}"
    title = f"{strip.model} x{strip.scale}, {strip.dataset} {args.image}, crop {args.crop} (x, y, w, h in HR pixels)"
    for path in save_strip(strip.panels, Path(stem), title):
        print(path)
    return 0
