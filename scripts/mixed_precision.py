"""Mixed precision (`--bits mixed:B`) against uniform WBAB: results/reference/mixed-precision.md's rows.

    python scripts/mixed_precision.py --model imdn --scale 2 --weights SHARED/weights/imdn/IMDN_x2.pth \
        --data-root SHARED/data/benchmark --train-dir SHARED/data/train --methods dobi emmse --threads 1 \
        --out /tmp/mixed.jsonl

Per method: the uniform WBAB model, then the mixed one: the method's per-layer sensitivity (output MSE in
context by default) on held-out patches (the "val" split of --train-dir), the exact ILP at the cost-model size
and BOPs of uniform WBAB (bench.mixed), and the method calibrated again under the chosen per-layer bits. Both
on the same calibration batch (32 x 64x64, seed 0). One JSON line per (method, bits, dataset) with PSNR/SSIM,
the cost model's size and BOPs, the chosen bits and the times.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cost import analyze  # noqa: E402
from bench.data.calib import calibration_batch  # noqa: E402
from bench.data.dataset import load_dataset  # noqa: E402
from bench.evaluate import evaluate  # noqa: E402
from bench.mixed.sensitivity import score_batch  # noqa: E402
from bench.mixed.spec import MixedSpec, mixed_allocation  # noqa: E402
from bench.quant.pipeline import CalibContext, quantize_with_method  # noqa: E402
from bench.threads import configure_threads  # noqa: E402
from methods import create_method  # noqa: E402
from models import create_model  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="imdn")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--train-dir", type=Path, required=True)
    p.add_argument("--datasets", nargs="+", default=["Set5"])
    p.add_argument("--methods", nargs="+", default=["dobi", "emmse"])
    p.add_argument("--criteria", nargs="+", default=["mse"])
    p.add_argument("--scope", default="ptq4sr")
    p.add_argument("--like", type=int, default=4)
    p.add_argument("--candidates", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    p.add_argument("--score-n", type=int, default=32)
    p.add_argument("--score-patch", type=int, default=64)
    p.add_argument("--refine", type=int, default=0, help="re-score around the allocation and re-solve, up to N times")
    p.add_argument("--skip-uniform", action="store_true", help="only the mixed rows")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help=".jsonl file (appended)")
    args = p.parse_args()
    configure_threads(args.threads)

    fp = create_model(args.model, args.scale, weights=args.weights).eval()
    calib = calibration_batch(args.train_dir, args.scale, n=32, patch=64, seed=0)
    score, score_source = score_batch(args.train_dir, args.scale, n=args.score_n, patch=args.score_patch, seed=0)
    datasets = {name: load_dataset(name, args.scale, data_root=args.data_root) for name in args.datasets}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def calibrate(method: str, layer_bits=None):
        ctx = CalibContext(fp_model=fp, calib_batch=calib, train_dir=args.train_dir, seed=0, progress=False)
        return quantize_with_method(fp, create_method(method), args.like, args.like, ctx, scope=args.scope,
                                    layer_bits=layer_bits)

    def log(row: dict, qmodel) -> None:
        cost = analyze(fp, args.model, args.scale, qmodel)
        for name, ds in datasets.items():
            res = evaluate(qmodel, ds, args.scale, "cpu", lpips=False, progress=False)
            line = {**row, "dataset": name, "psnr": res.psnr, "ssim": res.ssim, "size_bytes": cost.size_bytes,
                    "bops": cost.bops("paper"), "model": args.model, "scale": args.scale, "scope": args.scope,
                    "threads": args.threads, "torch": torch.__version__}
            print(json.dumps({k: v for k, v in line.items() if k != "layer_bits"}), flush=True)
            with args.out.open("a") as f:
                f.write(json.dumps(line) + "\n")

    for method in args.methods:
        if not args.skip_uniform:
            qmodel, seconds = calibrate(method)
            log({"method": method, "bits": f"w{args.like}a{args.like}", "calib_seconds": seconds}, qmodel)
        for criterion in args.criteria:
            spec = MixedSpec(args.like, tuple(args.candidates), criterion)
            start = time.perf_counter()
            allocation, sensitivity = mixed_allocation(fp, args.model, args.scale, spec, method,
                                                       create_method(method).describe()["params"], args.scope,
                                                       calib, score, train_dir=args.train_dir,
                                                       report=lambda msg: print(f"  {msg}", flush=True),
                                                       refine=args.refine)
            allocate_seconds = time.perf_counter() - start
            qmodel, seconds = calibrate(method, allocation.layer_bits)
            log({"method": method, "bits": spec.tag, "criterion": criterion, "refine": args.refine,
                 "calib_seconds": seconds,
                 "allocation_seconds": allocate_seconds, "sensitivity_seconds": sensitivity.seconds,
                 "sensitivity_cached": sensitivity.cached, "score_patches": score_source,
                 "score_batch": f"{args.score_n}x{args.score_patch}x{args.score_patch}",
                 "budget": allocation.to_dict()["budget"],
                 "layer_bits": {k: list(v) for k, v in allocation.layer_bits.items()}}, qmodel)


if __name__ == "__main__":
    main()
