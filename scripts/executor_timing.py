"""Wall time of the smoke matrix in this process, with `--workers 1` and with `--workers 2` (one thread each).

    python scripts/executor_timing.py --data-root DATA/benchmark --weights-dir WEIGHTS --calib DATA/train [--repeats 2]

Each run is a fresh `bench run` subprocess into a fresh run directory (imports, driver preflight, worker start-up
and the cells all counted), one after the other; the table gives every run's wall time and checks that the
three executors wrote the same PSNR/SSIM per cell.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = [sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main(sys.argv[1:]))"]
VARIANTS = {"in-process": [], "--workers 1": ["--workers", "1"], "--workers 2": ["--workers", "2"]}


def run_once(extra: list[str], out: Path, paths: list[str]) -> tuple[float, dict[str, tuple[float, float]]]:
    command = [*BENCH, "run", "--matrix", "smoke", "--out", str(out), "--threads", "1", "--device", "cpu",
               "--no-progress", *paths, *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seconds = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    return seconds, {r["key"]: (r["psnr"], r["ssim"]) for r in records}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--weights-dir", required=True)
    parser.add_argument("--calib", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    paths = ["--data-root", args.data_root, "--weights-dir", args.weights_dir, "--calib", args.calib]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    quality: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for name, extra in VARIANTS.items():
                seconds, quality[name] = run_once(extra, Path(folder) / f"{repeat}-{len(extra)}-{extra[-1:]}", paths)
                times[name].append(seconds)
    print("| run | wall time per repeat (s) |\n|---|---|")
    for name, values in times.items():
        command = f"bench run --matrix smoke --threads 1 {' '.join(VARIANTS[name])}".rstrip()
        print(f"| `{command}` | {', '.join(f'{v:.1f}' for v in values)} |")
    same = all(quality[name] == quality["in-process"] for name in VARIANTS)
    print(f"same PSNR/SSIM per cell in all three: {same}")
    print(f"load average after the runs: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
