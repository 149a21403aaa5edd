"""`bench latency`: measured latency of FP32 and of the quantized model in one runtime, on one LR input.

    bench latency --quantized imdn_x2_w8a8.pt --runtime onnxruntime --threads 1
    bench latency --quantized imdn_x2_w8a8.pt --runtime onnxruntime --dataset Set5 --data-root DIR --json
    bench latency --quantized imdn_x2_w8a8.pt --runtime torch           (fake-quant: simulation overhead)
    bench latency --quantized imdn_x2_deploy.pt --runtime openvino --threads 1 --dataset Set5 --data-root DIR
                  (OpenVINO: FP32, BF16 and the int8 export, beside onnxruntime quantize_static's model: --peers)

Both models run interleaved (FP, quantized, FP, ...) after warm-up; each reports its median (bench.export.latency).
With --dataset, the exported model's PSNR/SSIM (Y) is measured as well, beside the fake-quant model's.
"""
from __future__ import annotations

import argparse
import json
import sys
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
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="onnxruntime")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="openvino: the float baseline of the speed-up (both are timed; bf16 runs as f32 on CPUs "
                        "without bf16 instructions, and the output says so)")
    p.add_argument("--peers", default=None, metavar="NAMES",
                   help="comma-separated runtime PTQ peers timed (and evaluated) in the same loop: "
                        "ort-minmax, ort-entropy, ort-percentile, nncf, or none (default: ort-minmax for openvino, "
                        "none for onnxruntime); they calibrate on the quantized file's calibration patches")
    p.add_argument("--calib", type=Path, default=None, metavar="DIR",
                   help="HR images for the peers' calibration when the quantized file does not record its own")
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


def _peer_names(args: argparse.Namespace) -> list[str]:
    from bench.export.peers import get_peer
    if args.peers is None:  # default: the runtime's own int8 beside ours in OpenVINO, nothing extra elsewhere
        return ["ort-minmax"] if args.runtime == "openvino" else []
    names = [] if args.peers.strip() in ("", "none") else [n.strip() for n in args.peers.split(",")]
    for name in names:
        get_peer(name)  # an unknown name fails before any export
    return names


def _records_calibration(args: argparse.Namespace, qmodel) -> bool:
    return bool(args.calib or ((getattr(qmodel, "quant_meta", {}) or {}).get("calibration") or {}).get("train_dir"))


def _peer_batch(args: argparse.Namespace, qmodel, scale: int):
    """The calibration patches of the quantized file (so peers see what the method saw), or --calib's."""
    from bench.data.calib import calibration_batch
    calib = (getattr(qmodel, "quant_meta", {}) or {}).get("calibration") or {}
    train_dir = args.calib or calib.get("train_dir")
    if not train_dir:
        raise ConfigError(f"{args.quantized} records no calibration folder for the peers: give --calib DIR "
                          f"or --peers none")
    return calibration_batch(train_dir, scale, n=int(calib.get("n", 32)), patch=int(calib.get("patch", 64)),
                             seed=int(calib.get("seed", 0)))


def _runtime_latency(args, fp_model, qmodel, threads: int, dataset, scale: int):
    """(LatencyResult, {label: evaluation}, export report) for --runtime onnxruntime | openvino."""
    from bench.export import latency
    from bench.export.onnx_qdq import export_onnx
    from bench.export.peers import build_peer

    peer_names = _peer_names(args)
    if args.runtime == "openvino" and args.provider != "cpu":
        raise ConfigError("--provider applies to --runtime onnxruntime; openvino runs on the CPU here")
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        folder = args.keep_onnx or Path(tmp)
        fp_path, q_path = folder / "fp32.onnx", folder / "int8-qdq.onnx"
        export_onnx(fp_model, fp_path)
        report = export_onnx(qmodel, q_path, **opset_kwargs(args))
        peers = {}
        if peer_names and args.peers is None and not _records_calibration(args, qmodel):
            print(f"bench: note: {args.quantized} records no calibration folder: no peer is timed (give --calib DIR)",
                  file=sys.stderr)
            peer_names = []
        if peer_names:
            batch = _peer_batch(args, qmodel, scale)
            reduce_range = qmodel.quant_config.w_bits < 8  # 7-bit weights: the peers' reduce_range / overflow fix
            peers = {name: build_peer(name, fp_path, folder / "peers", batch, reduce_range) for name in peer_names}
        int4 = ", UINT4 weights" if report.uint4_weights else ""
        if args.runtime == "openvino":
            from bench.export.ov_model import OpenVINOSRModel as Runner
            result = latency.openvino_files_latency(fp_path, q_path, args.lr_size, args.runs, args.warmup, threads,
                                                    ("bf16",), peers, f"int8 QDQ{int4} (openvino)")
            make = lambda path: Runner(path, threads)  # noqa: E731
        else:
            from bench.export.ort_model import OnnxSRModel as Runner
            onnx_peers = {n: p for n, p in peers.items() if p.suffix == ".onnx"}
            result = latency.onnx_files_latency(fp_path, q_path, args.lr_size, args.runs, args.warmup, threads,
                                                args.provider, f"int8 QDQ{int4} (onnxruntime)", onnx_peers)
            peers = onnx_peers
            make = lambda path: Runner(path, threads, args.provider)  # noqa: E731
        evaluated = {}
        if dataset is not None:
            models = {"fake-quant": qmodel, f"{args.runtime} int8": make(q_path)}
            models.update({f"{args.runtime} peer:{name}": make(path) for name, path in peers.items()})
            evaluated = _evaluate(models, dataset, scale)
        return result, evaluated, report.to_dict()


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
        from bench.export.cpu import saturation_note
        note = saturation_note(qmodel.quant_config.w_bits)
        if note:
            record["cpu_note"] = note
            print(f"bench: note: {note}", file=sys.stderr)
        result, evaluated, record["export"] = _runtime_latency(args, fp_model, qmodel, threads, dataset, scale)
    record["latency"] = result.to_dict()
    if args.runtime == "openvino":
        baseline = result.fp32_ms if args.precision == "fp32" else result.others_ms["bf16"]
        record["latency"].update(baseline=args.precision, speedup_vs_baseline=baseline / result.quantized_ms)
        peer = result.others_ms.get("peer:ort-minmax")
        if peer is not None:  # the runtime's own int8 on the same CPU: how close to its int8 speed we are
            record["latency"]["speed_vs_ort_minmax"] = peer / result.quantized_ms
    record["evaluation"] = {k: {f: v[f] for f in ("dataset", "psnr", "ssim", "images")} for k, v in evaluated.items()}
    if args.json:
        print(json.dumps(record, default=str))
        return 0
    print(f"{name} x{scale} {record['quantization']} ({record['scope']} scope), {result.runtime} {result.provider}, "
          f"{threads} thread(s), LR {result.lr_size}x{result.lr_size}, median of {result.runs} interleaved runs "
          f"after {result.warmup} warm-up")
    print(f"  FP32 {result.fp32_ms:.1f} ms   {result.quantized_label} {result.quantized_ms:.1f} ms   "
          f"measured speed-up {result.speedup:.2f}x")
    for label, ms in result.others_ms.items():
        executed = result.notes.get(label)
        ran = f" (executed as {executed}: this CPU has no bf16 instructions)" if executed and executed != label else ""
        print(f"  {label} {ms:.1f} ms = {result.fp32_ms / ms:.2f}x of FP32; int8 is {ms / result.quantized_ms:.2f}x "
              f"as fast{ran}")
    for label, values in record["evaluation"].items():
        print(f"  {label}: {values['dataset']} PSNR {values['psnr']:.2f} dB, SSIM {values['ssim']:.4f}")
    return 0
