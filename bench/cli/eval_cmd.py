"""`bench eval`: PSNR/SSIM (Y, border = scale) and LPIPS of one model on one test set, per image and mean.

    bench eval --model imdn --scale 2 --dataset Set5 --weights IMDN_x2.pth --data-root DIR
    bench eval --model imdn --scale 4 --dataset sample --weights IMDN_x4.pth --json
    bench eval --model imdn --scale 2 --dataset Set5 --quantized imdn_x2_w8a8.pt         (a `bench quantize` file)
    bench eval --model imdn --scale 2 --dataset Set5 --method minmax --bits 8 --calib DIR (calibrate, then evaluate)
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from tabulate import tabulate

from bench.cli.options import add_quantization_args
from bench.errors import ConfigError
from bench.threads import add_threads_arg, configure_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on a test set (PSNR/SSIM on Y, LPIPS)",
                              description="Upscale every LR image of a test set with one model and print "
                                          "PSNR/SSIM on the Y channel (border = scale) and LPIPS, per image "
                                          "and averaged (the protocol of spec §5).")
    p.add_argument("--model", required=True, help="registered model name (see `bench models list`)")
    p.add_argument("--scale", type=int, required=True, help="upscaling factor (2, 3, 4)")
    p.add_argument("--dataset", required=True,
                   help="test set: Set5, Set14, B100, Urban100, Manga109, sample, or a folder name under the root")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="FP weights file (default: the model's default weights; 'random' for random init)")
    p.add_argument("--weights-dir", type=Path, default=None, metavar="DIR",
                   help="folder of checkpoints, as in `bench run`: a relative --weights is resolved against it, "
                        "and without --weights the model's official file is found in it by name")
    p.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                   help="test-set root in BasicSR layout (default: $BENCH_DATA_ROOT, else <repo>/datasets)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    add_threads_arg(p)
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help="tiled inference with LR tiles of N pixels (off by default; recorded in the output)")
    p.add_argument("--no-generate-lr", action="store_true",
                   help="fail instead of generating a missing LR folder")
    p.add_argument("--write-lr", action="store_true",
                   help="write generated LR into the set's own LR_bicubic/X<s> folder under the data root "
                        "(default: the cache; same as BENCH_WRITE_LR=1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    q = p.add_argument_group("quantized evaluation (optional)")
    q.add_argument("--quantized", type=Path, default=None, metavar="FILE",
                   help="calibrated quantization saved by `bench quantize --out`")
    q.add_argument("--method", default=None, help="calibrate with this PTQ method first (see `bench methods list`)")
    q.add_argument("--packed", type=Path, default=None, metavar="PATH",
                   help="packed low-bit model written by `bench export --format packed`")
    q.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                   help="ONNX model (e.g. `bench export --format onnx`), run with onnxruntime on the CPU")
    add_quantization_args(q)
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------- the model

def _calibrated_model(fp_model, args: argparse.Namespace, device: str):
    # Written by other parts of the project (bench.quant, methods): imported only on this path.
    from bench.cli.progress import show_progress
    from bench.cli.validate import bits_from_args, method_from_args
    from bench.data.calib import calibration_batch
    from bench.quant.pipeline import CalibContext, quantize_with_method

    method = method_from_args(args.method, args.method_param)
    w_bits, a_bits = bits_from_args(args)
    batch = calibration_batch(args.calib, args.scale, n=args.calib_n, patch=args.calib_patch, seed=args.seed)
    ctx = CalibContext(fp_model=fp_model, calib_batch=batch.to(device), train_dir=args.calib, val_batch=None,
                       device=device, seed=args.seed, progress=show_progress(args.no_progress or args.json))
    qmodel, seconds = quantize_with_method(fp_model, method, w_bits, a_bits, ctx, scope=args.scope)
    info = {"method": method.describe(), "w_bits": w_bits, "a_bits": a_bits, "calibration_seconds": seconds}
    return qmodel, info


def validate_request(args: argparse.Namespace) -> None:
    """Model, scale, method, bits, scope and weights checked before any side effect (LR generation)."""
    from bench.cli.validate import bits_from_args, check_model_scale, check_scope, method_from_args, resolve_weights_arg

    _check_exported_flags(args)
    if args.quantized is not None and args.method is not None:
        raise ConfigError("give either --quantized FILE or --method NAME, not both")
    check_model_scale(args.model, args.scale)
    if args.method is not None:
        method_from_args(args.method, args.method_param)
        bits_from_args(args)
        check_scope(args.scope)
        if args.calib is None:
            raise ConfigError("--method needs --calib DIR: a folder of HR training images for the calibration "
                              "patches (never a test set)")
    if args.quantized is not None and not Path(args.quantized).is_file():
        raise ConfigError(f"--quantized {args.quantized}: file not found; give a file written by `bench quantize --out`")
    resolve_weights_arg(args.model, args.scale, args.weights, args.weights_dir)


def _check_exported_flags(args: argparse.Namespace) -> None:
    """--packed / --onnx: alone among the model sources, and an existing file (bench.export)."""
    chosen = [flag for flag, value in (("--quantized", args.quantized), ("--method", args.method),
                                       ("--packed", args.packed), ("--onnx", args.onnx)) if value is not None]
    if len(chosen) > 1 and ("--packed" in chosen or "--onnx" in chosen):
        raise ConfigError(f"give one of --quantized, --method, --packed, --onnx, not {' and '.join(chosen)}")
    for flag, value, how in (("--packed", args.packed, "bench export --format packed"),
                             ("--onnx", args.onnx, "bench export --format onnx")):
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"{flag} {value}: file not found; give a file written by `{how}`")


def _exported_model(args: argparse.Namespace, device: str):
    """(model, description) for --packed / --onnx, else None."""
    if args.packed is not None:
        from bench.export.packed import load_packed
        from models import create_model
        qmodel = load_packed(args.packed, create_model(args.model, args.scale, weights="random", device=device))
        return qmodel.to(device).eval(), {"quantized": str(args.packed), "format": "packed",
                                          "meta": getattr(qmodel, "quant_meta", None)}
    if args.onnx is not None:
        if args.device not in (None, "cpu"):
            raise ConfigError(f"--onnx runs with onnxruntime on the CPU; use --device cpu (got {args.device})")
        from bench.export.ort_model import OnnxSRModel
        model = OnnxSRModel(args.onnx, threads=configure_threads(args.threads))
        return model, {"quantized": str(args.onnx), "format": "onnx", "meta": model.metadata}
    return None


def build_model(args: argparse.Namespace, device: str):
    """(model to evaluate, description of its quantization or None)."""
    from bench.cli.validate import resolve_weights_arg
    from models import create_model

    exported = _exported_model(args, device)
    if exported is not None:
        return exported
    weights = resolve_weights_arg(args.model, args.scale, args.weights, args.weights_dir)
    fp_model = create_model(args.model, args.scale, weights=weights, device=device)
    if args.quantized is not None:
        from bench.quant.io import load_quantized
        qmodel = load_quantized(args.quantized, fp_model).to(device).eval()
        return qmodel, {"quantized": str(args.quantized), "meta": getattr(qmodel, "quant_meta", None)}
    if args.method is not None:
        return _calibrated_model(fp_model, args, device)
    return fp_model, None


# ------------------------------------------------------------------------------------------- printing

def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def model_label(model: str, quant: dict | None) -> str:
    if quant is None:
        return model
    if "method" in quant:
        return f"{model} ({quant['method'].get('name', '?')} W{quant['w_bits']}A{quant['a_bits']})"
    return f"{model} (quantized: {quant['quantized']})"


def print_tables(result, model_label: str) -> None:
    rows = [[r.name, _fmt(r.psnr, 2), _fmt(r.ssim, 4), _fmt(r.lpips, 4)] for r in result.per_image]
    rows.append(["mean", _fmt(result.psnr, 2), _fmt(result.ssim, 4), _fmt(result.lpips, 4)])
    label = result.dataset
    if result.is_subset:
        label += f" (subset: {result.images} of {result.expected_count} images)"
    tiled = f", tiled {result.tiled}" if result.tiled else ""
    print(f"{model_label} x{result.scale} on {label}, {result.images} images, {result.device}{tiled}, "
          f"{result.seconds:.1f} s")
    print(tabulate(rows, headers=["image", "PSNR (Y)", "SSIM (Y)", "LPIPS"], disable_numparse=True))


def _check_device(device: str | None) -> str:
    import torch

    from bench.inference import resolve_device
    resolved = resolve_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return str(resolved)


def run(args: argparse.Namespace) -> int:
    from bench.data.dataset import load_dataset
    from bench.evaluate import evaluate

    configure_threads(args.threads)
    device = _check_device(args.device)
    validate_request(args)  # before load_dataset, which may write a missing LR folder
    dataset = load_dataset(args.dataset, args.scale, data_root=args.data_root,
                           generate_lr=not args.no_generate_lr, write_lr=True if args.write_lr else None)
    model, quant = build_model(args, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        result = evaluate(model, dataset, args.scale, device=device, lpips=not args.no_lpips,
                          progress=not (args.no_progress or args.json) and sys.stderr.isatty(), tile=args.tile)
    for warning in caught:  # e.g. LPIPS weights missing: one line, not a Python warning with a source line
        print(f"bench: warning: {warning.message}", file=sys.stderr)
    if args.json:
        # The file actually loaded (explicit, fetch cache or shipped default); "random" for untrained models.
        weights = getattr(model, "weights_source", args.weights)
        record = {"model": args.model, "weights": weights, **result.to_dict()}
        if quant is not None:
            record["quantization"] = quant
        print(json.dumps(record, default=str))
    else:
        print_tables(result, model_label(args.model, quant))
    return 0
