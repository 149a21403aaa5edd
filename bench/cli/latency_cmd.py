"""`bench latency`: measured latency of FP32 and of the quantized model in one runtime, on one LR input.

    bench latency --quantized imdn_x2_w8a8.pt --runtime onnxruntime --threads 1
    bench latency --quantized imdn_x2_w8a8.pt --runtime onnxruntime --dataset Set5 --data-root DIR --json
    bench latency --quantized imdn_x2_w8a8.pt --runtime torch           (fake-quant: simulation overhead)

Both models run interleaved (FP, quantized, FP, ...) after warm-up; each reports its median (bench.export.latency).
With --dataset, the exported model's PSNR/SSIM (Y) is measured as well, beside the fake-quant model's.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench.cli.export_cmd import add_opset_arg, add_source_args, export_meta, load_source, opset_kwargs
from bench.errors import ConfigError
from bench.threads import configure_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("latency", help="measured FP32 vs quantized latency in one runtime (+ PSNR)",
                              description="Median latency of the FP32 model and of its quantized counterpart in "
                                          "the same runtime on the same LR input; onnxruntime runs the QDQ export "
                                          "(integer kernels where it fuses them), torch the fake-quant model.")
    add_source_args(p)
    p.add_argument("--runtime", choices=("torch", "onnxruntime"), default="onnxruntime")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu", help="onnxruntime provider (default cpu)")
    p.add_argument("--lr-size", type=int, default=128, help="side of the LR input (default 128)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per model first (default 2)")
    p.add_argument("--dataset", default=None, help="also evaluate the exported model on this test set")
    p.add_argument("--data-root", type=Path, default=None, metavar="DIR", help="test-set root (BasicSR layout)")
    p.add_argument("--keep-onnx", type=Path, default=None, metavar="DIR",
                   help="write fp32.onnx and int8-qdq.onnx here instead of a temporary folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_opset_arg(p)
    p.set_defaults(func=run)


def _evaluate(fp_q_models: dict, dataset, scale: int) -> dict:
    from bench.evaluate import evaluate
    return {label: evaluate(model, dataset, scale, device="cpu", lpips=False, progress=False).to_dict()
            for label, model in fp_q_models.items()}


def run(args: argparse.Namespace) -> int:
    if args.runs < 1 or args.warmup < 0 or args.lr_size < 1:
        raise ConfigError(f"--runs {args.runs} --warmup {args.warmup} --lr-size {args.lr_size}: use runs >= 1, "
                          f"warmup >= 0 and a positive LR size")
    if args.runtime == "torch" and args.provider != "cpu":
        raise ConfigError("--provider applies to --runtime onnxruntime; torch latency runs on the CPU here")
    threads = configure_threads(args.threads)
    fp_model, qmodel, name, scale = load_source(args)
    dataset = None
    if args.dataset is not None:
        from bench.data.dataset import load_dataset
        dataset = load_dataset(args.dataset, scale, data_root=args.data_root)
    from bench.export import latency

    record = {"model": name, "scale": scale, "quantization": qmodel.quant_config.tag,
              "scope": getattr(qmodel, "quant_scope", None), "source": export_meta(args, name, scale, fp_model, qmodel)}
    evaluated = {}
    if args.runtime == "torch":
        result = latency.torch_latency(fp_model, qmodel, args.lr_size, args.runs, args.warmup, threads)
        if dataset is not None:
            evaluated = _evaluate({"fake-quant": qmodel}, dataset, scale)
    else:
        from bench.export.onnx_qdq import export_onnx
        from bench.export.ort_model import OnnxSRModel
        with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
            folder = args.keep_onnx or Path(tmp)
            fp_path, q_path = folder / "fp32.onnx", folder / "int8-qdq.onnx"
            export_onnx(fp_model, fp_path)
            report = export_onnx(qmodel, q_path, **opset_kwargs(args))
            label = "int8 QDQ, UINT4 weights (onnxruntime)" if report.uint4_weights else "int8 QDQ (onnxruntime)"
            result = latency.onnx_files_latency(fp_path, q_path, args.lr_size, args.runs, args.warmup, threads,
                                                args.provider, label)
            record["export"] = report.to_dict()
            if dataset is not None:
                evaluated = _evaluate({"fake-quant": qmodel, "onnxruntime int8": OnnxSRModel(q_path, threads,
                                                                                            args.provider)},
                                      dataset, scale)
    record["latency"] = result.to_dict()
    record["evaluation"] = {k: {f: v[f] for f in ("dataset", "psnr", "ssim", "images")} for k, v in evaluated.items()}
    if args.json:
        print(json.dumps(record, default=str))
        return 0
    print(f"{name} x{scale} {record['quantization']} ({record['scope']} scope), {result.runtime} {result.provider}, "
          f"{threads} thread(s), LR {result.lr_size}x{result.lr_size}, median of {result.runs} interleaved runs "
          f"after {result.warmup} warm-up")
    print(f"  FP32 {result.fp32_ms:.1f} ms   {result.quantized_label} {result.quantized_ms:.1f} ms   "
          f"measured speed-up {result.speedup:.2f}x")
    for label, values in record["evaluation"].items():
        print(f"  {label}: {values['dataset']} PSNR {values['psnr']:.2f} dB, SSIM {values['ssim']:.4f}")
    return 0
