"""`bench table`, `bench plot`, `bench visual`, `bench report`: reports of a run's records.jsonl."""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from bench.threads import add_threads_arg

# Where `bench table --output FILE --keep-preamble` starts writing (the reference tables' notes stay above it).
TABLE_MARKER = "<!-- bench table -->"


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
    table.add_argument("--keep-preamble", action="store_true",
                       help=f"with --output: keep the file's text down to its line {TABLE_MARKER} (notes, the "
                            f"command) and replace only what follows it (results/reference/*.md)")
    table.add_argument("--significance", action="store_true",
                       help="paired Wilcoxon test of each method against the best of its bit group: a marker in "
                            "md/LaTeX, p-value columns in csv")
    table.add_argument("--no-deployment", action="store_true",
                       help="leave out the size/latency table (cost model beside measured) under each table")
    table.add_argument("--digits", default=None, metavar="METRIC=N,...",
                       help="decimals printed, e.g. psnr=3 where methods differ by hundredths of a dB (default "
                            "psnr=2,ssim=4); bold still needs a lead > 0.05 dB / 0.0005, read at the printed precision")
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

    report = subparsers.add_parser("report", help="one self-contained HTML page: sortable tables, significance, "
                                                  "charts, per-image values, a crop slider, provenance")
    report.add_argument("--run", required=True, action="append",
                        help="run name under --results-dir, or a run directory (repeat for several runs)")
    report.add_argument("--results-dir", type=Path, default=Path("results"))
    report.add_argument("--out", type=Path, default=None, help="output HTML file (default: <first run>/report.html)")
    report.add_argument("--image", default=None, help="image of the visual comparison (default: the first, when the "
                                                      "run saved its SR images)")
    report.add_argument("--crop", default=None, help="x,y,w,h in HR pixels (default: a centred 96x96 square)")
    report.add_argument("--dataset", default=None)
    report.add_argument("--scale", type=int, default=None)
    report.add_argument("--model", default=None)
    report.add_argument("--data-root", type=Path, default=None,
                        help="test-set root for the crop (default: $BENCH_DATA_ROOT, else <repo>/datasets)")
    report.add_argument("--device", default="cpu")
    add_threads_arg(report)
    report.add_argument("--no-visual", action="store_true", help="leave the visual comparison out")
    report.add_argument("--screenshot", type=Path, default=None, metavar="FILE.png",
                        help="open the page in headless Chromium, check it has no JavaScript error, save a screenshot")
    report.add_argument("--window", default="1280x1600", help="screenshot size WIDTHxHEIGHT (default 1280x1600)")
    report.set_defaults(func=report_command)


def _latest_records(run) -> list[dict]:
    from bench.runner.records import latest_by_key, read_records
    return list(latest_by_key(read_records(run.records)).values())


def run_ending(run: Path, run_arg: str, deployment: bool = False) -> str:
    """What `bench run` prints when it ends: the run's main table, the text of `bench table --run RUN
    --no-deployment` (of `bench table --run RUN` with `deployment`), then the next commands, written with
    `run_arg` (the run's name, or its folder) so that they can be pasted as they are."""
    from bench.runner.tables import render_run

    commands = [(f"bench table --run {run_arg}", "this table and the size/latency one; --format latex|csv, --significance"),
                (f"bench plot --run {run_arg}", f"figures: PSNR vs bits and size, latency; in {run / 'figures'}"),
                (f"bench report --run {run_arg}", f"all of it in one HTML page, {run / 'report.html'}")]
    width = max(len(command) for command, _ in commands)
    return (render_run(run, deployment=deployment) + "\nNext:\n"
            + "".join(f"  {command:<{width}}  # {what}\n" for command, what in commands))


def run_argument(out: Path, default_results: Path = Path("results")) -> str:
    """`--run` for a run folder: its name when it lies in the default results folder (as `bench run` without
    --out puts it), else the folder itself."""
    return shlex.quote(out.name if out.parent == default_results else str(out))


def table_command(args: argparse.Namespace) -> int:
    from bench.runner.rundir import find_run
    from bench.runner.tables import load_reference, render_run

    run = find_run(args.run, args.results_dir)
    reference = load_reference(args.reference) if args.reference else None
    text = render_run(run.path, args.format, reference, delta=args.reference_mode == "delta",
                      significance=args.significance, deployment=not args.no_deployment, digits=args.digits)
    if args.output:
        if args.keep_preamble:
            text = _preamble(args.output) + text
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def _preamble(path: Path) -> str:
    """The text of `path` down to its TABLE_MARKER line and a blank line after it."""
    from bench.errors import ConfigError
    head, marker, _ = (path.read_text(encoding="utf-8") if path.is_file() else "").partition(TABLE_MARKER + "\n")
    if not marker:
        raise ConfigError(f"{path} has no line {TABLE_MARKER}; add it where the table should start, or leave out "
                          f"--keep-preamble to write the table alone")
    return head + marker + "\n"


def plot_command(args: argparse.Namespace) -> int:
    from bench.runner.plots import plot_run
    from bench.runner.rundir import find_run

    run = find_run(args.run, args.results_dir)
    notes: list[str] = []  # figures with nothing to compare, and why
    paths = plot_run(_latest_records(run), args.out or run.path / "figures", notes)
    for path in paths:
        print(path)
    for note in notes:
        print(note)
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


def report_command(args: argparse.Namespace) -> int:
    import datetime

    from bench.report.crops import CropRequest
    from bench.report.html import write_report
    from bench.runner.rundir import find_run

    runs = [find_run(name, args.results_dir) for name in args.run]
    data_root = args.data_root or (Path(os.environ["BENCH_DATA_ROOT"]) if os.environ.get("BENCH_DATA_ROOT") else None)
    request = None if args.no_visual else CropRequest(args.image, args.crop, args.dataset, args.scale, args.model,
                                                      data_root, args.device, args.threads)
    out = args.out or runs[0].path / "report.html"
    # Not bench.runner.provenance.timestamp: that module imports torch, which a report without a crop never needs.
    generated = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    page = write_report(runs, out, request, generated=generated)
    print(f"wrote {out} ({page.records} cells, {page.tables} tables, {out.stat().st_size / 1e3:.0f} kB)")
    return _screenshot(out, args.screenshot, args.window) if args.screenshot else 0


def _screenshot(page: Path, png: Path, window: str) -> int:
    from bench.errors import ConfigError
    from bench.report.browser import check_page, screenshot

    try:
        width, height = (int(v) for v in window.lower().split("x"))
    except ValueError:
        raise ConfigError(f"bad --window {window!r}; use WIDTHxHEIGHT, e.g. --window 1280x1600") from None
    check = check_page(page)
    problems = check.console + ([check.page_errors] if check.page_errors else [])
    for line in problems:
        print(f"JavaScript problem: {line}")
    screenshot(page, png, width, height)
    print(f"wrote {png} ({png.stat().st_size / 1e3:.0f} kB); page status: {check.status or 'script did not run'}")
    return 0 if check.ok else 1
