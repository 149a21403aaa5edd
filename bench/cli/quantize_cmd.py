"""`bench quantize`: calibrate one model with one PTQ method and save the bounds (a small file).

    bench quantize --model imdn --scale 2 --method minmax --bits 8 --calib DIR --out imdn_x2_w8a8.pt
    bench quantize --model swinir-light --scale 4 --method dobi --bits 4 --method-param variant=code \
                   --calib DIR --out swinir_x4_dobi_w4a4.pt
    bench quantize --model imdn --scale 2 --method dobi --bits mixed:4 --scope ptq4sr --calib DIR --out m.pt

`--bits mixed:B`: per-layer bits from --mixed-candidates, at most the cost-model size and BOPs of uniform WBAB
(the method's per-layer sensitivity on held-out patches of --calib, then an exact ILP; bench.mixed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli.options import add_quantization_args
from bench.errors import ConfigError
from bench.threads import add_threads_arg, configure_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="calibrate a model with a PTQ method and save its bounds",
                              description="Quantize a copy of a model (fake quantization, spec 2.3), calibrate it "
                                          "with a PTQ method on LR patches of --calib, save the bounds to --out.")
    p.add_argument("--model", required=True, help="registered model name (see `bench models list`)")
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--method", required=True, help="PTQ method (see `bench methods list`)")
    add_quantization_args(p, mixed=True)
    p.add_argument("--mixed-candidates", default="2,3,4,6,8", metavar="B,B,...",
                   help="with --bits mixed:B: candidate bit-widths per layer (weights and activations alike)")
    p.add_argument("--mixed-criterion", choices=("mse", "hawq-v2"), default="mse",
                   help="with --bits mixed:B: sensitivity criterion (default mse; see `bench sensitivity`)")
    p.add_argument("--mixed-context", choices=("context", "alone"), default="context",
                   help="with --bits mixed:B: score each layer with the others at B bits (default) or FP")
    p.add_argument("--mixed-refine", type=int, default=0, metavar="N",
                   help="with --bits mixed:B: re-score each layer around the allocation and solve again, up to N "
                        "times (criterion mse in context; default 0)")
    p.add_argument("--per-channel-weights", action="store_true", help="per-output-channel weight bounds")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="FP weights file (default: the model's default weights; 'random' for random init)")
    p.add_argument("--weights-dir", type=Path, default=None, metavar="DIR",
                   help="folder of checkpoints, as in `bench run`: a relative --weights is resolved against it, "
                        "and without --weights the model's official file is found in it by name")
    p.add_argument("--device", default="cpu")
    add_threads_arg(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the bounds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.cli.progress import show_progress
    from bench.cli.validate import bits_from_args, check_model_scale, check_scope, method_from_args, resolve_weights_arg
    from bench.data.calib import calibration_batch
    from bench.quant import CalibContext, QuantConfig, quantize_with_method, quantizers, save_quantized
    from models import create_model

    # Everything the user typed is checked before the calibration patches are drawn (and cached).
    configure_threads(args.threads)
    check_model_scale(args.model, args.scale)
    method = method_from_args(args.method, args.method_param)
    mixed = _mixed_spec(args)
    if mixed is not None:
        args.bits = mixed.like
    w_bits, a_bits = bits_from_args(args)
    check_scope(args.scope)
    QuantConfig(w_bits, a_bits, args.scope)
    if args.calib is None:
        raise ConfigError("bench quantize needs --calib DIR: a folder of HR training images for calibration patches")
    weights = resolve_weights_arg(args.model, args.scale, args.weights, args.weights_dir)
    fp_model = create_model(args.model, args.scale, weights=weights, device=args.device)
    batch = calibration_batch(args.calib, args.scale, n=args.calib_n, patch=args.calib_patch, seed=args.seed)
    ctx = CalibContext(fp_model=fp_model, calib_batch=batch.to(args.device), train_dir=args.calib,
                       val_batch=None, device=args.device, seed=args.seed,
                       progress=show_progress(args.no_progress))
    layer_bits, mixed_meta = None, None
    if mixed is not None:
        layer_bits, mixed_meta = _allocate(args, mixed, fp_model, batch, method)
    qmodel, seconds = quantize_with_method(fp_model, method, w_bits, a_bits, ctx, scope=args.scope,
                                           per_channel_weights=args.per_channel_weights, layer_bits=layer_bits)
    meta = {"model": args.model, "scale": args.scale, "weights": None if weights is None else str(weights),
            "method": method.describe(),
            "calibration": {"train_dir": str(args.calib), "n": args.calib_n, "patch": args.calib_patch,
                            "seed": args.seed},
            "calibration_seconds": seconds}
    if mixed_meta is not None:
        meta["mixed"] = mixed_meta
    save_quantized(qmodel, args.out, meta)
    count = len(quantizers(qmodel))
    print(f"{args.model} x{args.scale} {qmodel.quant_config.tag} ({qmodel.quant_scope} scope, {count} quantizers) "
          f"calibrated with {args.method} in {seconds:.2f} s -> {args.out}")
    return 0


def _mixed_spec(args: argparse.Namespace):
    """The MixedSpec of `--bits mixed:B` (None for a uniform --bits)."""
    if not isinstance(args.bits, str):
        return None
    from bench.mixed.spec import MixedSpec, parse_mixed
    if args.w_bits is not None or args.a_bits is not None:
        raise ConfigError("--bits mixed:B chooses every layer's bits; drop --w-bits/--a-bits")
    try:
        candidates = tuple(int(b) for b in args.mixed_candidates.split(",") if b.strip())
    except ValueError:
        raise ConfigError(f"--mixed-candidates {args.mixed_candidates!r}: write bit-widths separated by commas, "
                          f"e.g. 2,3,4,6,8") from None
    spec = parse_mixed(args.bits, "--bits")
    return MixedSpec(spec.like, candidates, args.mixed_criterion, args.mixed_context, args.mixed_refine)


def _allocate(args: argparse.Namespace, spec, fp_model, batch, method) -> tuple[dict, dict]:
    """(layer_bits, record of the allocation) for `--bits mixed:B`: sensitivity on held-out patches, then the ILP."""
    from bench.mixed.sensitivity import score_batch
    from bench.mixed.spec import mixed_allocation
    score, score_source = score_batch(args.calib, args.scale, n=args.calib_n, patch=args.calib_patch, seed=args.seed)
    allocation, sensitivity = mixed_allocation(
        fp_model, args.model, args.scale, spec, args.method, method.describe().get("params", {}), args.scope,
        batch, score, train_dir=args.calib, device=args.device, seed=args.seed,
        report=lambda msg: print(f"  sensitivity {msg}", flush=True))
    source = "cached" if sensitivity.cached else f"{sensitivity.seconds:.1f} s"
    print(f"{spec.tag}: {len(allocation.layer_bits)} layers allocated ({source} sensitivity), "
          f"{allocation.size_bytes:,} of {allocation.budget.size_bytes:,} bytes, "
          f"{allocation.bops:.4g} of {allocation.budget.bops:.4g} BOPs")
    return dict(allocation.layer_bits), {"spec": spec.to_dict(), "tag": spec.tag, **allocation.to_dict(),
                                         "sensitivity_seconds": sensitivity.seconds, "score_patches": score_source,
                                         "sensitivity_cached": sensitivity.cached}
