"""Regenerate results/reference/imdtn-w4a4.md: PTQ methods at W4A4 and W2A2 on IMDTN x4 (official NTIRE 2022
weights), Set5 and Set14.

    python scripts/imdtn_table.py --data-root DATA/benchmark --train-dir DATA/train \
        --weights-dir WEIGHTS/ntire2022-esr-x4 --threads 1                       # FP + the six methods
    python scripts/imdtn_table.py ... --methods adaround --param adaround.iters=200   # add (or redo) one method

The rows live in the jsonl next to the table (`imdtn-w4a4.jsonl`); a run replaces the rows of the
(method, bits) it measures and keeps every other row, then rewrites the markdown from the jsonl, so methods
added later are one command each. `--no-fp` skips the FP rows (they are replaced when measured again).

Protocol (as scripts/imdn_w4a4.py): one calibration batch of 32 LR patches of 64x64 (seed 0) from --train-dir,
the same for every method and bit-width; the model's default scope (`2dquant+convs`: the Swin blocks as in
2dquant, every conv as in ptq4sr with the first and last conv at 8 bits); Y-channel PSNR/SSIM, border 4, whole
image, no self-ensemble, no LPIPS. 'calib s' is the wall time of `method.calibrate`. The fine-tuning methods
run with reduced iterations (--pac-iters, --dqc-iters, --dqc-batch, --param): each row records its parameters.
"""
from __future__ import annotations

import argparse
import json
import subprocess
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
from bench.quant.scopes import resolve_scope  # noqa: E402
from bench.runner.baselines import BicubicUpsampler  # noqa: E402
from methods import create_method  # noqa: E402
from models import create_model  # noqa: E402
from models.fetch import official_file_in  # noqa: E402
from scripts.imdn_w4a4 import device_name, method_params  # noqa: E402

MODEL, SCALE = "imdtn", 4
# The default run: the six methods of the 2DQuant paper; later methods are added with --methods NAME.
METHODS = ("minmax", "percentile", "emmse", "ptq4sr", "dobi", "2dquant")
FP = "FP32"
BICUBIC = "bicubic"  # MATLAB-bicubic upscaling, scored by the same protocol: the floor a broken model falls to
DEFAULT_OUT = REPO / "results" / "reference" / "imdtn-w4a4.md"


def parse_params(items: list[str]) -> dict[str, dict]:
    """`METHOD.key=value` items -> {method: {key: value}}; values parsed as JSON when they can be."""
    out: dict[str, dict] = {}
    for item in items:
        name, sep, value = item.partition("=")
        method, dot, key = name.partition(".")
        if not (sep and dot and method and key):
            raise SystemExit(f"--param {item!r}: write METHOD.key=value, e.g. adaround.iters=200")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(method, {})[key] = parsed
    return out


def row_key(row: dict) -> tuple:
    return row["method"], row["bits"], row["dataset"]


def load_rows(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []


def save_rows(log: Path, rows: list[dict]) -> None:
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))


def merge(rows: list[dict], new: list[dict]) -> list[dict]:
    """Rows of `new` replace those with the same (method, bits, dataset); order: FP, bicubic, then by bits, then first seen."""
    fresh = {row_key(r) for r in new}
    kept = [r for r in rows if row_key(r) not in fresh] + new
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in kept))}
    return sorted(kept, key=lambda r: (r["method"] != FP, -(r["bits"] or 32), order[r["method"]],
                                       r["dataset"] != "Set5"))


def markdown(rows: list[dict]) -> str:
    lines = ["# IMDTN x4 W4A4 and W2A2: PTQ methods (official NTIRE 2022 team09 weights)", "",
             "Calibration: 32 LR patches 64x64 (seed 0) from T91+BSD200, one batch for every row; the model's "
             "default scope `2dquant+convs` (Swin blocks as 2dquant: split q/k/v, proj, fc1, fc2 and both attention "
             "BMMs, per-tensor; every conv per-channel as ptq4sr, first and last conv 8-bit); Y-channel PSNR/SSIM, "
             "border 4, whole image, no self-ensemble. FP32 is the full-precision model, bicubic the MATLAB-bicubic "
             "upscaling of the same LR.",
             "The fine-tuning methods ran with reduced iterations on a shared CPU (the params column is exactly "
             "what each row used; ptq4sr's default is iters=250 per phase, 2dquant's paper preset iters=3000, "
             "batch=32). 'calib s' = wall time of the method's calibrate(), measured on a CPU shared with other "
             "jobs: compare within a row group only.",
             "Generated by scripts/imdtn_table.py (rows in imdtn-w4a4.jsonl; `--methods NAME` adds or replaces rows): "
             "`python scripts/imdtn_table.py --data-root SHARED/data/benchmark --train-dir SHARED/data/train "
             "--weights-dir SHARED/weights --threads 1` (defaults: the six methods, W4A4 and W2A2, pac-iters 100, "
             "dqc-iters 100, dqc-batch 4).",
             "Issue 10/11 rows, added with `--no-fp --methods ...`: ptq4vit, repq-vit and noisyquant at their defaults; "
             "condiquant with `--param condiquant.iters=100 --param condiquant.batch=4` (the 2dquant rows' DQC); "
             "adaround, brecq and qdrop with `--recon-iters 150 --recon-batch 4 --recon-lr 1e-2` (as in imdn-w4a4.md; "
             "paper: 20,000 iterations per unit, batch 32, lr 1e-3), bounds from DOBI. Their 'calib s' were measured "
             "with one or two other jobs on the 2 cores.",
             "",
             "| method | bits | params | dataset | PSNR | SSIM | calib s | device | commit |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"
        bits = "-" if r["bits"] is None else f"W{r['bits']}A{r['bits']}"  # FP32 and bicubic
        calib = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        lines.append(f"| {r['method']} | {bits} | {params} | {r['dataset']} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                     f"{calib} | {r['device']} | {r.get('commit', '-')} |")
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "-"
    except OSError:
        return "-"


def result_row(method: str, bits: int | None, params: dict, dataset: str, res, seconds: float | None,
               device: torch.device) -> dict:
    return {"model": MODEL, "scale": SCALE, "method": method, "bits": bits, "params": params, "dataset": dataset,
            "psnr": res.psnr, "ssim": res.ssim, "seconds": seconds, "device": device_name(device),
            "torch": torch.__version__, "commit": git_commit()}


def record(args: argparse.Namespace, new: list[dict]) -> None:
    log = args.out.with_suffix(".jsonl")
    rows = merge(load_rows(log), new)
    save_rows(log, rows)
    args.out.write_text(markdown(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, type=Path, help="test sets in BasicSR layout")
    ap.add_argument("--train-dir", required=True, type=Path, help="HR training images for the calibration patches")
    ap.add_argument("--weights-dir", required=True, type=Path, help="folder with team09_imdtn.pth (searched below)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--datasets", nargs="+", default=["Set5", "Set14"])
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    ap.add_argument("--no-fp", action="store_true", help="do not measure (and replace) the FP32 and bicubic rows")
    ap.add_argument("--pac-iters", type=int, default=100)
    ap.add_argument("--dqc-iters", type=int, default=100)
    ap.add_argument("--dqc-batch", type=int, default=4)
    # method_params (scripts/imdn_w4a4.py) reads these for adaround/brecq/qdrop; same defaults as there
    ap.add_argument("--recon-iters", type=int, default=200, help="adaround/brecq/qdrop iterations per unit")
    ap.add_argument("--recon-batch", type=int, default=8, help="adaround/brecq/qdrop samples per iteration")
    ap.add_argument("--recon-lr", type=float, default=1e-3, help="adaround/brecq/qdrop Adam lr on the rounding V")
    ap.add_argument("--param", action="append", default=[], metavar="METHOD.key=value",
                    help="a method parameter (repeatable), e.g. adaround.iters=200")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids OpenMP contention on a shared CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    weights = official_file_in(args.weights_dir, MODEL, SCALE)
    if weights is None:
        raise SystemExit(f"team09_imdtn.pth not found under {args.weights_dir}; pass the folder that holds it")
    params = method_params(args)
    for method, extra in parse_params(args.param).items():
        params[method] = {**params.get(method, {}), **extra}
    fp = create_model(MODEL, SCALE, weights=weights, device=str(device)).eval()
    print(f"scope: {resolve_scope(fp).name}", flush=True)
    calib = calibration_batch(args.train_dir, SCALE, n=32, patch=64, seed=0)
    datasets = {name: load_dataset(name, SCALE, data_root=args.data_root) for name in args.datasets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.no_fp:
        for label, model in ((FP, fp), (BICUBIC, BicubicUpsampler(SCALE))):
            record(args, [result_row(label, None, {}, name, evaluate(model, ds, SCALE, device, lpips=False,
                                                                     progress=False), None, device)
                          for name, ds in datasets.items()])
    for bits in args.bits:
        for name in args.methods:
            method_kw = params.get(name, {})
            ctx = CalibContext(calib_batch=calib.to(device), train_dir=args.train_dir, device=device,
                               progress=sys.stderr.isatty())
            start = time.time()
            qmodel, seconds = quantize_with_method(fp, create_method(name, **method_kw), bits, bits, ctx)
            rows = [result_row(name, bits, method_kw, ds_name,
                               evaluate(qmodel, ds, SCALE, device, lpips=False, progress=False), seconds, device)
                    for ds_name, ds in datasets.items()]
            print(f"W{bits}A{bits} {name}: calibrated in {seconds:.1f}s (total {time.time() - start:.1f}s) "
                  + " ".join(f"{r['dataset']} {r['psnr']:.2f}" for r in rows), flush=True)
            record(args, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
