"""`bench export`: write a calibrated quantization as a deployable file.

    bench export --quantized imdn_x2_w8a8.pt --format packed --out imdn_x2_w8a8.safetensors
    bench export --quantized imdn_x2_w8a8.pt --format onnx --out imdn_x2_w8a8.onnx --weights IMDN_x2.pth
    bench export --quantized RUN/cache/bounds/<key>.pt --model imdn --scale 2 --format onnx --out m.onnx
    bench export --quantized imdn_x2_w4a8.pt --format onnx --opset 21 --out m.onnx   (<= 4-bit weights as UINT4)

`--quantized` is a `bench quantize --out` file or a run's cached calibration (RUN/cache/bounds/*.pt); model and
scale default to the ones it records.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.errors import ConfigError
from bench.threads import add_threads_arg, configure_threads

FORMATS = ("packed", "onnx")


def add_source_args(parser) -> None:
    """The calibrated model to start from (shared with `bench latency`)."""
    parser.add_argument("--quantized", type=Path, required=True, metavar="FILE",
                        help="calibrated bounds: a `bench quantize --out` file or RUN/cache/bounds/*.pt")
    parser.add_argument("--model", default=None, help="registered model name (default: the one the file records)")
    parser.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the file's)")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="FP weights file (default: the file's record, else the model's default weights)")
    add_threads_arg(parser)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a calibrated model as packed low-bit safetensors or ONNX QDQ",
                              description="packed: integer weight codes at their bit-width + scales, FP layers and "
                                          "activation bounds (load with `bench eval --packed`); onnx: QDQ graph with "
                                          "8-bit activations and integer zero points (run with `bench eval --onnx`).")
    add_source_args(p)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="file to write")
    add_opset_arg(p)
    p.set_defaults(func=run)


def add_opset_arg(parser) -> None:
    parser.add_argument("--opset", type=int, default=None, metavar="N",
                        help="ONNX opset of the QDQ export (default 17: uint8 weights; 21 or newer stores weights of "
                             "at most 4 bits as UINT4, two per byte)")


def load_source(args: argparse.Namespace):
    """(fp_model, qmodel, model name, scale) from --quantized and the optional overrides."""
    from bench.quant.io import load_quantized, read_quantized
    from models import create_model

    meta = read_quantized(args.quantized).get("meta", {}) or {}
    name = args.model or meta.get("model")
    scale = args.scale or meta.get("scale")
    if not name or not scale:
        raise ConfigError(f"{args.quantized} does not record its model and scale (a run's cached calibration): "
                          f"give --model NAME --scale S")
    weights = args.weights if args.weights is not None else meta.get("weights")
    fp_model = create_model(name, int(scale), weights=weights)
    qmodel = load_quantized(args.quantized, fp_model).eval()
    return fp_model, qmodel, name, int(scale)


def export_meta(args: argparse.Namespace, name: str, scale: int, fp_model, qmodel) -> dict:
    """What an exported file records about where it came from."""
    return {"model": name, "scale": scale, "source": str(args.quantized),
            "weights": getattr(fp_model, "weights_source", None) or args.weights,
            "quant_meta": getattr(qmodel, "quant_meta", {})}


def run(args: argparse.Namespace) -> int:
    configure_threads(args.threads)
    fp_model, qmodel, name, scale = load_source(args)
    meta = export_meta(args, name, scale, fp_model, qmodel)
    config = qmodel.quant_config
    if args.format == "packed":
        from bench.export.packed import save_packed
        info = save_packed(qmodel, args.out, meta)
        print(f"{name} x{scale} {config.tag} packed -> {args.out}: {info.file_bytes:,} bytes "
              f"(header {info.header_bytes:,}, weight codes {info.code_bytes:,}, FP parameters "
              f"{info.fp_param_bytes:,}, scales/bounds {info.weight_param_bytes + info.act_bound_bytes:,})")
        return 0
    from bench.export.onnx_qdq import export_onnx
    report = export_onnx(qmodel, args.out, metadata={"model": name, "scale": str(scale), "config": config.tag,
                                                     "source": json.dumps(meta, default=str)}, **opset_kwargs(args))
    widened = f"; {len(report.widened)} ranges without 0 widened to include it" if report.widened else ""
    widened += f"; {report.uint4_weights} weights stored as UINT4" if report.uint4_weights else ""
    print(f"{name} x{scale} {config.tag} ONNX -> {args.out}: {report.weight_qdq} weight and {report.activation_qdq} "
          f"activation QDQ pairs, zero points rounded (grid moved by at most {report.max_grid_shift_steps:.2f} "
          f"step){widened}; opset {report.opset}")
    return 0


def opset_kwargs(args: argparse.Namespace) -> dict:
    """{'opset': N} when --opset was given (export_onnx's default otherwise)."""
    return {} if getattr(args, "opset", None) is None else {"opset": args.opset}
