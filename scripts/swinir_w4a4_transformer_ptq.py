"""Measure NoisyQuant and CondiQuant beside FP, DOBI and 2DQuant: shipped SwinIR-light x2, W4A4 (--bits), Set5.

    python scripts/swinir_w4a4_transformer_ptq.py --data-root DATA/benchmark --train-dir DATA/train \
        --out results/reference/swinir-light-w4a4-noisy-condi.md --threads 1

Protocol: the project's shipped SwinIR-light x2 weights (models/weights, CPU-trained: not the official ones),
one seeded calibration batch of 32 LR patches of 64x64 from --train-dir as scripts/imdn_w4a4.py builds it
(bench.data.calib.calibration_batch), the `2dquant` scope, Y-channel PSNR/SSIM (bench.evaluate), no LPIPS.
DQC (2DQuant and CondiQuant's second stage) runs reduced (--dqc-iters, --dqc-batch, --dqc-patch) so that the
table fits a shared 2-core CPU; both get the same settings, so their difference is CondiQuant's weight transform.
Each row is appended to a JSON-lines file next to --out as soon as it is measured, then the table is written.
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

from bench.data.calib import calibration_batch  # noqa: E402
from bench.data.dataset import load_dataset  # noqa: E402
from bench.evaluate import evaluate  # noqa: E402
from bench.quant.pipeline import CalibContext, quantize_with_method  # noqa: E402
from methods import create_method  # noqa: E402
from models import create_model  # noqa: E402
from models.fetch import resolve_weights_spec  # noqa: E402


def rows_to_run(args: argparse.Namespace) -> list[tuple[str, str, dict]]:
    """(label, method, params) in the order they are measured; "fp" is the FP model itself."""
    dqc = {"iters": args.dqc_iters, "batch": args.dqc_batch, "patch": args.dqc_patch}
    rows = [("FP", "fp", {}), ("DOBI", "dobi", {}), ("NoisyQuant", "noisyquant", {}),
            ("CondiQuant transform + DOBI (no DQC)", "condiquant", {"iters": 0}),
            (f"2DQuant ({args.dqc_iters} DQC steps)", "2dquant", dqc),
            (f"CondiQuant ({args.dqc_iters} DQC steps)", "condiquant", dqc)]
    rows = [r for r in rows if r[1] in args.methods and not (args.skip_dqc and r[2].get("iters"))]
    return [r for r in rows if not args.dqc_only or r[2].get("iters")]


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| method | params | Set5 PSNR | Set5 SSIM | calib s | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"
        calib = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['label']} | {params} | {r['psnr']:.3f} | {r['ssim']:.4f} | {calib} | {r['notes']} |")
    return "\n".join(lines) + "\n"


def notes_of(method) -> str:
    record = method.describe()
    if "transform" in record:
        t = record["transform"]
        return (f"{t['transformed']}/{t['layers']} linears transformed, max kappa {t['kappa_before_max']:.0f} -> "
                f"{t['kappa_after_max']:.0f}, max XW change {t['max_rel_change']:.1e}")
    if "noised" in record:
        return f"noisy bias on {record['noised']['quantizers']} post-GELU fc2 inputs"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, type=Path)
    ap.add_argument("--train-dir", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "reference" / "swinir-light-w4a4-noisy-condi.md")
    ap.add_argument("--methods", nargs="+", default=["fp", "dobi", "noisyquant", "condiquant", "2dquant"])
    ap.add_argument("--dqc-iters", type=int, default=40)
    ap.add_argument("--skip-dqc", action="store_true", help="leave out the rows with DQC steps")
    ap.add_argument("--dqc-only", action="store_true", help="only the rows with DQC steps")
    ap.add_argument("--dqc-batch", type=int, default=4)
    ap.add_argument("--dqc-patch", type=int, default=32)
    ap.add_argument("--bits", type=int, default=4, help="weight and activation bit-width")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    fp = create_model("swinir-light", 2, weights=resolve_weights_spec("swinir-light", 2, "shipped"))
    test = load_dataset("Set5", 2, data_root=args.data_root)
    batch = calibration_batch(args.train_dir, 2, n=32, patch=64, seed=0)
    log = args.out.with_suffix(".jsonl")
    log.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, name, params in rows_to_run(args):
        start = time.perf_counter()
        if name == "fp":
            model, seconds, notes = fp, None, "shipped weights"
        else:
            method = create_method(name, **params)
            ctx = CalibContext(calib_batch=batch, progress=False)
            model, seconds = quantize_with_method(fp, method, args.bits, args.bits, ctx)
            notes = notes_of(method)
        result = evaluate(model, test, 2, "cpu", lpips=False, progress=False)
        row = {"label": label, "method": name, "params": params, "psnr": result.psnr, "ssim": result.ssim,
               "seconds": seconds, "notes": notes, "wall_s": time.perf_counter() - start}
        rows.append(row)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    header = (f"# SwinIR-light x2 W{args.bits}A{args.bits} on Set5: NoisyQuant and CondiQuant beside DOBI and 2DQuant "
              "(shipped weights)\n\n"
              "Made by `scripts/swinir_w4a4_transformer_ptq.py` on a shared 2-core CPU, one torch thread (wall times "
              "under load). Calibration: 32 LR patches 64x64 (seed 0) from T91+BSD200; `2dquant` scope; Y-channel "
              f"PSNR/SSIM, border 2. DQC reduced to {args.dqc_iters} steps of batch {args.dqc_batch}, LR patch "
              f"{args.dqc_patch} (the paper: 3000 steps of batch 32, patch 64) for both 2DQuant and CondiQuant.")
    args.out.write_text(markdown(rows, header), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
