"""`bench sensitivity`: per-layer sensitivity to a change of bit-width, with a method's bounds.

    bench sensitivity --model imdn --scale 2 --method dobi --scope ptq4sr --calib DIR --out sens/
    bench sensitivity --model imdn --scale 2 --method emmse --criterion hawq-v2 --calib DIR --out sens/

The method calibrates on the calibration patches of --calib (split "calib"); the scores are measured on
held-out patches of the same folder (split "val", every 10th image), never on a test set. Writes
<out>/sensitivity.json, sensitivity.png and sensitivity.pdf, and prints the table. Cached under
$BENCH_CACHE/sensitivity/.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.cli.options import SCOPE_HELP
from bench.errors import ConfigError
from bench.threads import add_threads_arg, configure_threads


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of bit-widths, e.g. 2,3,4,6,8") \
            from None


def register(subparsers) -> None:
    p = subparsers.add_parser("sensitivity", help="per-layer sensitivity to each candidate bit-width",
                              description="Score every quantized layer (weight and input quantizers together) "
                                          "at each candidate bit-width with a method's bounds, on held-out "
                                          "calibration patches: output MSE against FP, or HAWQ-V2's Hessian "
                                          "trace times the quantization error.")
    p.add_argument("--model", required=True, help="registered model name (see `bench models list`)")
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--method", required=True, help="PTQ method whose bounds are scored (see `bench methods list`)")
    p.add_argument("--method-param", action="append", default=[], metavar="KEY=VALUE",
                   help="method hyper-parameter (repeatable)")
    p.add_argument("--scope", default="auto", help=SCOPE_HELP)
    p.add_argument("--like", type=int, default=4,
                   help="the uniform bit-width of the context (every other layer, criterion mse) (default 4)")
    p.add_argument("--candidates", type=_int_list, default=[2, 3, 4, 6, 8], metavar="B,B,...",
                   help="candidate bit-widths, the same for weights and activations (default 2,3,4,6,8)")
    p.add_argument("--criterion", choices=("mse", "hawq-v2"), default="mse",
                   help="mse: output MSE against FP (default); hawq-v2: Hutchinson trace of the output-MSE "
                        "Hessian times ||Q(W) - W||^2 (+ the same for the layer's input)")
    p.add_argument("--context", choices=("context", "alone"), default="context",
                   help="context: every other layer at --like bits (default); alone: every other layer FP")
    p.add_argument("--hutchinson-samples", type=int, default=32, help="Rademacher samples (hawq-v2, default 32)")
    p.add_argument("--calib", type=Path, default=None, metavar="DIR",
                   help="folder of HR training images: calibration patches and held-out score patches")
    p.add_argument("--calib-n", type=int, default=32, help="calibration patches (default 32)")
    p.add_argument("--score-n", type=int, default=32, help="held-out patches the scores are measured on (default 32)")
    p.add_argument("--calib-patch", type=int, default=64, help="LR patch size (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, metavar="PATH", help="FP weights file (default: the model's default)")
    p.add_argument("--weights-dir", type=Path, default=None, metavar="DIR", help="folder of checkpoints")
    p.add_argument("--device", default="cpu")
    add_threads_arg(p)
    p.add_argument("--no-cache", action="store_true", help="measure again even when a cached result exists")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder for sensitivity.json, sensitivity.png and sensitivity.pdf")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.cli.validate import check_model_scale, check_scope, method_from_args, resolve_weights_arg
    from bench.data.calib import calibration_batch
    from bench.mixed.sensitivity import SensitivitySettings, measure_sensitivity, plot_sensitivity, score_batch
    from models import create_model

    configure_threads(args.threads)
    check_model_scale(args.model, args.scale)
    method = method_from_args(args.method, args.method_param)
    check_scope(args.scope)
    settings = SensitivitySettings(args.method, method.describe().get("params", {}), args.scope, args.like,
                                   tuple(args.candidates), args.criterion, args.context, args.hutchinson_samples,
                                   seed=args.seed)
    if args.calib is None:
        raise ConfigError("bench sensitivity needs --calib DIR: a folder of HR training images (calibration and "
                          "held-out score patches; never a test set)")
    weights = resolve_weights_arg(args.model, args.scale, args.weights, args.weights_dir)
    fp_model = create_model(args.model, args.scale, weights=weights, device=args.device)
    calib = calibration_batch(args.calib, args.scale, n=args.calib_n, patch=args.calib_patch, seed=args.seed)
    score, score_source = score_batch(args.calib, args.scale, n=args.score_n, patch=args.calib_patch, seed=args.seed)
    result = measure_sensitivity(fp_model, args.model, args.scale, settings, calib, score, train_dir=args.calib,
                                 device=args.device, use_cache=not args.no_cache,
                                 report=lambda msg: print(f"  {msg}", flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sensitivity.json").write_text(json.dumps({**result.to_dict(), "score_patches": score_source},
                                                          indent=1))
    plot_sensitivity(result, args.out / "sensitivity.png")
    print(result.table())
    source = "cached" if result.cached else f"measured in {result.seconds:.1f} s"
    print(f"{args.model} x{args.scale} {result.scope} {args.method} {result.settings.criterion} "
          f"({result.settings.context}, scored on {score_source}): {len(result.layers)} layers, {source} -> "
          f"{args.out}/sensitivity.json, .png, .pdf")
    return 0
