"""Regenerate results/reference/imdn-w4a4.md: the six PTQ methods at W4A4 on IMDN (official weights).

    python scripts/imdn_w4a4.py --data-root DATA/benchmark --train-dir DATA/train --weights-dir WEIGHTS/imdn \
        --out results/reference/imdn-w4a4.md

Protocol: one seeded calibration batch of 32 LR patches of 64x64 from --train-dir (bench.data.calib), the
model's default quantization scope, Y-channel PSNR/SSIM (bench.evaluate), no LPIPS. The calibration time is
the wall time of `method.calibrate` (bench.quant.pipeline.quantize_with_method). The fine-tuning methods run
with reduced settings by default (see --pac-iters, --dqc-iters, --dqc-batch) so the table fits in about an
hour on 2 CPU cores; the exact parameters of every row are written into the table. The reconstruction methods
(adaround, brecq, qdrop) take --recon-iters / --recon-batch / --recon-lr.

`--append` keeps the rows already logged in the .jsonl next to --out (and the table's notes above it) and
replaces only the rows this run measures again, e.g. adding W2A2 rows beside the W4A4 ones:

    python scripts/imdn_w4a4.py ... --append --bits 2 --scales 2 --datasets Set5
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.data.calib import calibration_batch
from bench.data.dataset import load_dataset
from bench.evaluate import evaluate
from bench.quant.pipeline import CalibContext, quantize_with_method
from methods import create_method
from models import create_model
from scripts.imdn_args import add_imdn_args

METHODS = ("minmax", "percentile", "emmse", "ptq4sr", "dobi", "2dquant", "adaround", "brecq", "qdrop")
RECONSTRUCTION = ("adaround", "brecq", "qdrop")


def method_params(args: argparse.Namespace) -> dict[str, dict]:
    return {
        "minmax": {}, "percentile": {}, "emmse": {}, "dobi": {},
        "ptq4sr": {"iters": args.pac_iters},
        "2dquant": {"iters": args.dqc_iters, "batch": args.dqc_batch},
        **{name: {"iters": args.recon_iters, "batch": args.recon_batch, "lr": args.recon_lr} for name in RECONSTRUCTION},
    }


def table_rows(rows: list[dict], out: Path, append: bool) -> tuple[list[dict], str | None]:
    """With --append: the rows already in the .jsonl log (bits 4 where not recorded) before this run's, and the
    existing table's text above its first table line (its notes); else this run's rows alone."""
    log = out.with_suffix(".jsonl")
    if not append or not log.exists():
        return rows, None
    old = [{"bits": 4, **json.loads(line)} for line in log.read_text().splitlines() if line.strip()]
    latest: dict[tuple, dict] = {}  # one row per cell: the last measured (dict order = first appearance)
    for r in old + rows:
        key = (r["scale"], r["method"], r["dataset"], r["bits"], json.dumps(r["params"], sort_keys=True))
        latest.pop(key, None)
        latest[key] = r
    prefix = out.read_text().split("\n| model |")[0].rstrip() + "\n" if out.exists() else None
    return list(latest.values()), prefix


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| model | scale | W/A | method | params | dataset | PSNR | SSIM | calib s | device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    fp_first = sorted(rows, key=lambda r: (-r.get("bits", 4), r["scale"], r["method"] != "FP32"))  # stable otherwise
    for r in fp_first:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"
        calib = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        bits = "32/32" if r["method"] == "FP32" else f"{r.get('bits', 4)}/{r.get('bits', 4)}"
        lines.append(f"| {r['model']} | x{r['scale']} | {bits} | {r['method']} | {params} | {r['dataset']} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.4f} | {calib} | {r['device']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_imdn_args(ap, REPO / "results" / "reference" / "imdn-w4a4.md")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--pac-iters", type=int, default=250)
    ap.add_argument("--dqc-iters", type=int, default=300)
    ap.add_argument("--dqc-batch", type=int, default=8)
    ap.add_argument("--recon-iters", type=int, default=200, help="adaround/brecq/qdrop iterations per unit")
    ap.add_argument("--recon-batch", type=int, default=8, help="adaround/brecq/qdrop samples per iteration")
    ap.add_argument("--recon-lr", type=float, default=1e-3, help="adaround/brecq/qdrop Adam lr on the rounding V")
    ap.add_argument("--append", action="store_true",
                    help="keep the rows already in the .jsonl log and the table's notes; replace only re-run rows")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    params = method_params(args)
    rows: list[dict] = []
    header = (f"# IMDN W{args.bits}A{args.bits}: six PTQ methods (official IMDN weights)\n\n"
              f"Calibration: 32 LR patches 64x64 (seed 0) from T91+BSD200 (`{args.train_dir.name}`), one batch; "
              f"default scope of the model; Y-channel PSNR/SSIM, border = scale; no self-ensemble.\n"
              f"Reduced fine-tuning (CPU budget): ptq4sr Pac iters={args.pac_iters} per phase (batch 2, patch 64); "
              f"2dquant DQC preset=paper with iters={args.dqc_iters}, batch={args.dqc_batch} (patch 64, cosine, "
              f"select=last). 'calib s' = wall time of the method's calibrate() (DBDC/DOBI + fine-tuning).\n"
              f"Generated by scripts/imdn_w4a4.py, torch {torch.__version__}.")
    log = args.out.with_suffix(".jsonl")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for scale in args.scales:
        fp = create_model("imdn", scale, weights=args.weights_dir / f"IMDN_x{scale}.pth", device=str(device)).eval()
        calib = calibration_batch(args.train_dir, scale, n=32, patch=64, seed=0)
        datasets = {name: load_dataset(name, scale, data_root=args.data_root) for name in args.datasets}
        for name, ds in datasets.items():
            res = evaluate(fp, ds, scale, device, lpips=False, progress=False)
            row = {"model": "imdn", "scale": scale, "bits": 32, "method": "FP32", "params": {}, "dataset": name,
                   "psnr": res.psnr, "ssim": res.ssim, "seconds": None, "device": device_name(device)}
            rows.append(row)
            if args.append:  # the merged table takes its FP rows from the log as well
                with log.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
        for method_name in args.methods:
            method = create_method(method_name, **params[method_name])
            ctx = CalibContext(calib_batch=calib.to(device), train_dir=args.train_dir, device=device,
                               progress=sys.stderr.isatty())
            start = time.time()
            qmodel, seconds = quantize_with_method(fp, method, args.bits, args.bits, ctx)
            print(f"x{scale} {method_name}: calibrated in {seconds:.1f}s (total {time.time() - start:.1f}s)",
                  flush=True)
            for name, ds in datasets.items():
                res = evaluate(qmodel, ds, scale, device, lpips=False, progress=False)
                row = {"model": "imdn", "scale": scale, "bits": args.bits, "method": method_name,
                       "params": params[method_name], "dataset": name, "psnr": res.psnr, "ssim": res.ssim,
                       "seconds": seconds, "device": device_name(device)}
                if "reconstruction" in method.describe():  # units, iterations, loss vs nearest rounding
                    row["reconstruction"] = method.describe()["reconstruction"]
                rows.append(row)
                print(json.dumps(row), flush=True)
                with log.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            write_table(rows, header, args)
    write_table(rows, header, args)
    return 0


def write_table(rows: list[dict], header: str, args: argparse.Namespace) -> None:
    merged, prefix = table_rows(rows, args.out, args.append)
    args.out.write_text(markdown(merged, (prefix or header).rstrip("\n")))


if __name__ == "__main__":
    raise SystemExit(main())
