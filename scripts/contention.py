"""Wall time of one `bench` command on an idle CPU and beside a busy process (the speed issue's contention check).

    python scripts/contention.py --out results/reference/contention.md            # the demo matrix
    python scripts/contention.py --matrix smoke --extra "--data-root D --weights-dir W --calib C"

Each timed run is a fresh `bench run --matrix M --out <tmp>` (nothing reused from an earlier run; the cache of
embedded photos and calibration patches is filled by an untimed warm-up first). Scenarios, in turns:
  * idle: nothing else runs;
  * busy: one other process spins on one core (`python -c "while True: pass"`), defaults of this project
    (GOMP_SPINCOUNT=2000, bench/threads.py);
  * busy, spin-waiting OpenMP: the same with OMP_WAIT_POLICY=ACTIVE, the OpenMP default before this project set
    short spin waits (what a user saw before: an order of magnitude slower).
The ratio busy/idle is the figure of merit: losing one of two cores should cost about 2x, not 10x.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCENARIOS = {
    "idle": ({}, False),
    "busy": ({}, True),
    "busy, OMP_WAIT_POLICY=ACTIVE": ({"OMP_WAIT_POLICY": "ACTIVE"}, True),
}


def timed_run(bench: str, matrix: str, extra: list[str], env_extra: dict[str, str], busy: bool) -> float:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run([bench, "run", "--matrix", matrix, "--out", out, "--no-progress", *extra],
                           check=True, env={**os.environ, **env_extra}, stdout=subprocess.DEVNULL)
            return time.perf_counter() - start
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", default="demo")
    ap.add_argument("--extra", default="", help="more `bench run` arguments, as one string")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--out", type=Path, default=None, help="Markdown file (and .json beside it)")
    ap.add_argument("--no-warmup", action="store_true", help="the cache is already warm (a run just finished)")
    args = ap.parse_args(argv)
    bench = shutil.which("bench") or sys.exit("the `bench` command is not installed (pip install -e .)")
    extra = shlex.split(args.extra)
    if not args.no_warmup:
        timed_run(bench, args.matrix, extra, {}, False)  # warm-up: embedded photos and calibration patches cached
    times: dict[str, list[float]] = {name: [] for name in args.scenarios}
    for _ in range(args.repeats):
        for name in args.scenarios:
            env_extra, busy = SCENARIOS[name]
            times[name].append(timed_run(bench, args.matrix, extra, env_extra, busy))
            print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    idle = statistics.median(times["idle"]) if "idle" in times else None
    lines = [f"# `bench run --matrix {args.matrix}`: idle vs beside one busy process", "",
             f"Made by `python scripts/contention.py --matrix {args.matrix}`, {os.cpu_count()} CPUs, "
             f"{args.repeats} run(s) per scenario (median), taken in turns; default threads (the CPUs this process "
             f"may use).", "", "| scenario | wall time (s) | / idle |", "|---|---|---|"]
    for name, values in times.items():
        median = statistics.median(values)
        ratio = f"{median / idle:.2f}" if idle else "-"
        lines.append(f"| {name} | {median:.1f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"matrix": args.matrix, "times_s": times}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
