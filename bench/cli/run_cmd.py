"""`bench run --matrix NAME|FILE ...` and `bench results`."""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from tabulate import tabulate

from bench.cli.progress import show_progress
from bench.threads import add_threads_arg, configure_threads


def register(subparsers) -> None:
    run = subparsers.add_parser("run", help="run a benchmark matrix (resumable)",
                                description="Evaluate every cell of a matrix; finished cells are skipped, so an "
                                            "interrupted run resumes where it stopped.")
    run.add_argument("--matrix", required=True, metavar="NAME|FILE",
                     help="a matrix from matrices/ (demo, smoke, paper, full) or a YAML file")
    run.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                     help="run only matching cells (repeatable, all must match; keys: model, scale, method, "
                          "label, bits, w_bits, a_bits, dataset; comma-separated values mean any of them)")
    run.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                     help="test-set root in BasicSR layout (default: $BENCH_DATA_ROOT, else <repo>/datasets)")
    run.add_argument("--weights-dir", type=Path, default=None, metavar="DIR",
                     help="folder of checkpoints: relative `weights:` paths of the matrix are resolved against it, "
                          "and default/official weights are found in it by their official file name")
    run.add_argument("--calib", "--train-root", dest="calib", type=Path, default=None, metavar="DIR",
                     help="folder of HR training images for calibration patches, never a test set "
                          "(default: $BENCH_CALIB_DIR)")
    run.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="run directory (default: results/<matrix name>)")
    run.add_argument("--write-lr", action="store_true",
                     help="write LR generated for sets without it into their own LR_bicubic/X<s> folder under the "
                          "data root (default: the cache; same as BENCH_WRITE_LR=1)")
    run.add_argument("--force", action="store_true", help="recompute the selected cells even if already done")
    run.add_argument("--retry-errors", action="store_true", help="recompute cells whose last attempt failed")
    run.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    add_threads_arg(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--deployment", action="store_true",
                     help="at the end, print the size/latency table under the PSNR/SSIM table, as `bench table` "
                          "does (default: the main table alone, as `bench table --no-deployment`)")
    _add_executor_args(run)
    run.set_defaults(func=run_command, on_interrupt=interrupted_run)

    results = subparsers.add_parser("results", help="list benchmark runs: cells done / planned, errors, state")
    results.add_argument("--results-dir", type=Path, default=Path("results"))
    results.set_defaults(func=results_command)


def _add_executor_args(run) -> None:
    group = run.add_argument_group("where the work runs (README: Executors)")
    group.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local: this machine (default); ray: Ray tasks on a cluster (--address) or on a Ray "
                            "started here")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="local: N worker processes (one GPU each when there are GPUs; default: this process "
                            "alone); ray without --address: the CPUs of the Ray started here")
    group.add_argument("--address", default=None, metavar="ADDR",
                       help="ray: the cluster to submit to (auto, HOST:PORT or ray://HOST:PORT)")
    group.add_argument("--gpus-per-task", type=float, default=None, metavar="G",
                       help="ray: GPUs each task reserves (default: 1 if the cluster has GPUs, else 0; 0.5 shares one)")
    group.add_argument("--plan", "--dry-run", dest="plan", action="store_true",
                       help="print the cells, calibrations, what is done and the time estimate; run nothing")


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def run_command(args: argparse.Namespace) -> int:
    from bench.cli.report_cmd import run_argument, run_ending
    from bench.runner.cells import parse_only
    from bench.runner.execute import RunOptions, run_matrix
    from bench.runner.executors import ExecutorConfig
    from bench.runner.matrix import load_matrix

    configure_threads(args.threads)
    if args.write_lr:  # the data loader's config key, also seen by worker processes
        from bench.data.dataset import WRITE_LR_ENV
        os.environ[WRITE_LR_ENV] = "1"
    only = parse_only(args.only)
    matrix = load_matrix(args.matrix)
    options = RunOptions(
        out=args.out or Path("results") / matrix.name,
        data_root=args.data_root or _env_path("BENCH_DATA_ROOT"),
        weights_dir=args.weights_dir,
        train_root=args.calib or _env_path("BENCH_CALIB_DIR"),
        device=args.device, force=args.force, retry_errors=args.retry_errors,
        progress=show_progress(args.no_progress), only=only, announce=print,
        executor=ExecutorConfig(args.executor, args.workers, args.address, args.gpus_per_task, args.threads))
    options.executor.check()
    if args.plan:
        from bench.runner.preview import format_preview, preview_run
        print(format_preview(preview_run(matrix, options)))
        return 0
    stats = run_matrix(matrix, options)  # prints what it skips, and why, before it starts
    print(stats.summary() + (f"; {len(stats.skipped)} entries skipped (listed above)" if stats.skipped else ""))
    print("\n" + run_ending(options.out, run_argument(options.out), args.deployment), end="")
    return 1 if stats.errors else 0


def interrupted_run(args: argparse.Namespace, argv: list[str]) -> str:
    """What Ctrl-C during `bench run` prints: the run folder that keeps the finished cells, and the command that
    resumes the run (this one again, from this directory; finished cells are skipped)."""
    from bench.runner.matrix import load_matrix

    out = (args.out or Path("results") / load_matrix(args.matrix).name).resolve()
    resume = shlex.join(["bench", *(arg for arg in argv if arg != "--force")])
    lines = [f"bench: interrupted; the cells finished so far are kept in {out}",
             f"bench: resume with: cd {shlex.quote(os.getcwd())} && {resume}"]
    if "--force" in argv:
        lines.append("bench: (--force left out: it would recompute the cells this run finished; selected cells it "
                     "had not reached keep their earlier records, add --force again to recompute them too)")
    return "\n".join(lines)


def results_command(args: argparse.Namespace) -> int:
    from bench.runner.rundir import list_runs, run_summary

    runs = [run_summary(run) for run in list_runs(args.results_dir)]
    if not runs:
        print(f"no runs in {args.results_dir} (start one with `bench run --matrix demo`)")
        return 0
    rows = [[r["run"], f"{r['done']} / {'?' if r['planned'] is None else r['planned']}", r["errors"], r["state"],
             ", ".join(r["models"]), r["last_started"], r["path"]] for r in runs]
    print(tabulate(rows, headers=["run", "done / planned", "errors", "state", "models", "last started", "path"],
                   disable_numparse=True))
    return 0
