"""OpenMP wait settings on small-batch fine-tuning, idle and beside a busy process (results/reference/speed.md).

    python scripts/wait_policy.py            # needs no shared data: shipped SwinIR-light x2, random LR patches

Each setting runs in a fresh process: 2DQuant with 20 DQC steps (batch 2, 32x32 patches) on 4 LR patches of 32x32,
2 torch threads; "busy" adds one process spinning on one core. The project's default is GOMP_SPINCOUNT=2000.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "GOMP_SPINCOUNT=2000 (default)": {"GOMP_SPINCOUNT": "2000"},
    "GOMP_SPINCOUNT=5000": {"GOMP_SPINCOUNT": "5000"},
    "GOMP_SPINCOUNT=20000": {"GOMP_SPINCOUNT": "20000"},
}
CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from bench.threads import configure_threads, prepare_runtime
prepare_runtime()
import torch
from bench.quant import CalibContext, quantize_with_method
from methods.registry import create_method
from models import create_model
configure_threads(2)
torch.manual_seed(0)
model = create_model("swinir-light", 2, weights={weights!r})
batch = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
start = time.perf_counter()
method = create_method("2dquant", preset="paper", iters=20, batch=2, patch=32)
quantize_with_method(model, method, 4, 4, CalibContext(calib_batch=batch, progress=False, fp_model=model))
print(time.perf_counter() - start)
"""


def run(env_extra: dict[str, str], busy: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        code = CHILD.format(repo=str(REPO), weights=str(REPO / "models/weights/swinir-light_x2.safetensors"))
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
        return float(out.strip().splitlines()[-1])
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                    help="the wait settings to measure (default: all; each takes about 1-3 minutes, idle and busy)")
    args = ap.parse_args(argv)
    print("| wait setting | idle | beside one busy process |\n|---|---|---|")
    for name in args.settings:
        env = SETTINGS[name]
        idle, busy = run(env, False), run(env, True)
        print(f"| {name} | {idle:.1f} s | {busy:.1f} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
