"""Regenerate results/reference/onnx-int8.md (+ .json): real INT8 inference through ONNX Runtime beside fake quant.

    OMP_NUM_THREADS=1 python scripts/onnx_int8.py --data-root DATA/benchmark --train-dir DATA/train \
        --imdn-weights WEIGHTS/imdn/IMDN_x2.pth --out results/reference/onnx-int8.md

Protocol, per row (IMDN x2 official weights: fp-edges and ptq4sr scopes x MinMax and DOBI at W8A8; SwinIR-light x4
shipped weights, 2dquant scope, MinMax W8A8):
  * one seeded calibration batch (32 LR patches of 64x64 from --train-dir), bounds by the method;
  * Set5 PSNR (Y, border = scale) of the fake-quant model, of the fake-quant model with the ONNX integer grids
    (zero points rounded: `with_integer_bounds`, the rounding's cost), and of the ONNX QDQ export run by
    onnxruntime (CPU provider);
  * latency: FP32 ONNX and QDQ ONNX in one onnxruntime process, interleaved (FP, INT8, FP, ...) after warm-up,
    median of --runs, intra_op_num_threads = --threads, on the same LR input (the top-left --lr-size crop of
    Set5's first LR image); beside it the speed-up the paper's rule predicts (bench.cost, ops linear in bits).
  * reference row: onnxruntime's own `quantize_static` of the FP32 IMDN (QDQ on every op's output, its own MinMax
    on the same calibration batch, uint8 activations / int8 weights): what the runtime's int8 kernels give when
    the graph is quantized the runtime's way (not the benchmark's bounds; its PSNR is reported as well).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cost import analyze  # noqa: E402
from bench.data.calib import calibration_batch  # noqa: E402
from bench.data.dataset import load_dataset  # noqa: E402
from bench.evaluate import evaluate  # noqa: E402
from bench.export.latency import interleaved_medians  # noqa: E402
from bench.export.onnx_qdq import export_onnx, with_integer_bounds  # noqa: E402
from bench.export.ort_model import OnnxSRModel  # noqa: E402
from bench.inference import to_tensor  # noqa: E402
from bench.quant import CalibContext, quantize_with_method  # noqa: E402
from methods import create_method  # noqa: E402
from models import create_model  # noqa: E402

IMDN_ROWS = [("fp-edges", "minmax"), ("fp-edges", "dobi"), ("ptq4sr", "minmax"), ("ptq4sr", "dobi")]


def psnr(model, dataset, scale: int) -> float:
    return evaluate(model, dataset, scale, "cpu", lpips=False, progress=False).psnr


def lr_input(dataset, size: int, multiple: int) -> np.ndarray:
    side = -(-size // multiple) * multiple
    lr = to_tensor(dataset[0].lr)[..., :side, :side]
    return np.ascontiguousarray(lr.numpy())


def latency(fp_path: Path, q_path: Path, x: np.ndarray, runs: int, warmup: int, threads: int) -> dict:
    fp, q = OnnxSRModel(fp_path, threads), OnnxSRModel(q_path, threads)
    medians = interleaved_medians({"fp": lambda: fp.run_numpy(x), "q": lambda: q.run_numpy(x)}, runs, warmup)
    return {"fp32_ms": medians["fp"], "int8_ms": medians["q"], "speedup": medians["fp"] / medians["q"]}


def row(name: str, scale: int, fp_model, qmodel, dataset, x, folder: Path, args, fp_path: Path) -> dict:
    q_path = folder / f"{name}-{qmodel.quant_scope}.onnx"
    report = export_onnx(qmodel, q_path)
    start = time.time()
    result = {
        "model": name, "scale": scale, "scope": qmodel.quant_scope, "bits": qmodel.quant_config.tag,
        "psnr_fake_quant": psnr(qmodel, dataset, scale),
        "psnr_integer_grid_torch": psnr(with_integer_bounds(qmodel), dataset, scale),
        "psnr_onnxruntime_int8": psnr(OnnxSRModel(q_path, args.threads), dataset, scale),
        "predicted_speedup": analyze(fp_model, name, scale, qmodel).speedup(),
        "qdq_nodes": {k: report.nodes.get(k, 0) for k in ("QuantizeLinear", "DequantizeLinear")},
        "widened_ranges": len(report.widened), "max_grid_shift_steps": report.max_grid_shift_steps,
        **latency(fp_path, q_path, x, args.runs, args.warmup, args.threads),
    }
    result["seconds"] = time.time() - start
    return result


def calibrated(fp_model, method: str, scope: str, batch) -> torch.nn.Module:
    ctx = CalibContext(fp_model=fp_model, calib_batch=batch, progress=False)
    qmodel, _ = quantize_with_method(fp_model, create_method(method), 8, 8, ctx, scope=scope)
    qmodel.method_name = method
    return qmodel.eval()


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration patches."""

    def __init__(self, batch: torch.Tensor, input_name: str) -> None:
        self.items = iter([{input_name: batch[i:i + 1].numpy()} for i in range(batch.shape[0])])

    def get_next(self):
        return next(self.items, None)


def ort_quantize_static_row(fp_path: Path, folder: Path, batch, dataset, scale, x, args) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, out = folder / "imdn-pre.onnx", folder / "imdn-ort-static.onnx"
    quant_pre_process(str(fp_path), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), _Reader(batch, "lr"), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax)
    import onnx
    model = onnx.load(str(out))
    for key, value in (("pad_multiple", "1"), ("pad_mode", "flip_concat")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(out))
    return {"model": "imdn", "scale": scale, "scope": "onnxruntime quantize_static (all ops)", "bits": "w8a8",
            "psnr_onnxruntime_int8": psnr(OnnxSRModel(out, args.threads), dataset, scale),
            **latency(fp_path, out, x, args.runs, args.warmup, args.threads)}


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# Real INT8 inference (ONNX Runtime, CPU) beside fake quant: Set5 PSNR and measured latency",
        "",
        "Regenerate: `OMP_NUM_THREADS=1 python scripts/onnx_int8.py --data-root DATA/benchmark --train-dir DATA/train "
        "--imdn-weights WEIGHTS/imdn/IMDN_x2.pth --out results/reference/onnx-int8.md` (protocol in the script's "
        "docstring).",
        "",
        f"Environment: {env['machine']}; onnxruntime {env['onnxruntime']}, torch {env['torch']}; "
        f"intra_op_num_threads = {env['threads']}, inter_op 1; LR input {env['lr_size']} (crop of Set5 "
        f"`{env['image']}`), median of {env['runs']} interleaved runs after {env['warmup']} warm-up; shared, "
        f"noisy machine: ratios are from one process, absolute times are indicative.",
        "",
        "| model | scope | method | W/A | PSNR fake quant | PSNR int grid (torch) | PSNR ORT int8 | ORT - FQ "
        "| FP32 ms (ORT) | INT8 ms (ORT) | measured speed-up | paper-rule speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fq = r.get("psnr_fake_quant")
        cells = [r["model"], r["scope"], r.get("method", "-"), r["bits"].upper(),
                 "-" if fq is None else f"{fq:.3f}",
                 "-" if "psnr_integer_grid_torch" not in r else f"{r['psnr_integer_grid_torch']:.3f}",
                 f"{r['psnr_onnxruntime_int8']:.3f}", "-" if fq is None else f"{r['psnr_onnxruntime_int8'] - fq:+.3f}",
                 f"{r['fp32_ms']:.1f}", f"{r['int8_ms']:.1f}", f"{r['speedup']:.2f}x",
                 "-" if "predicted_speedup" not in r else f"{r['predicted_speedup']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "FP PSNR (torch): " + ", ".join(f"{k} {v:.3f} dB" for k, v in env["fp_psnr"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--train-dir", type=Path, required=True)
    ap.add_argument("--imdn-weights", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "reference" / "onnx-int8.md")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr-size", type=int, default=128)
    ap.add_argument("--skip-swinir", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    rows, fp_psnr = [], {}
    with tempfile.TemporaryDirectory(prefix="onnx-int8-") as tmp:
        folder = Path(tmp)
        set5 = load_dataset("Set5", 2, data_root=args.data_root)
        imdn = create_model("imdn", 2, weights=args.imdn_weights)
        fp_psnr["IMDN x2"] = psnr(imdn, set5, 2)
        x = lr_input(set5, args.lr_size, 1)
        fp_path = folder / "imdn-fp32.onnx"
        export_onnx(imdn, fp_path)
        batch = calibration_batch(args.train_dir, 2, n=32, patch=64, seed=0)
        for scope, method in IMDN_ROWS:
            qmodel = calibrated(imdn, method, scope, batch)
            rows.append({"method": method, **row("imdn", 2, imdn, qmodel, set5, x, folder, args, fp_path)})
            print(json.dumps(rows[-1]), flush=True)
        rows.append(ort_quantize_static_row(fp_path, folder, batch, set5, 2, x, args))
        print(json.dumps(rows[-1]), flush=True)
        if not args.skip_swinir:
            set5x4 = load_dataset("Set5", 4, data_root=args.data_root)
            swinir = create_model("swinir-light", 4)
            fp_psnr["SwinIR-light x4"] = psnr(swinir, set5x4, 4)
            x4 = lr_input(set5x4, args.lr_size // 2, swinir.pad_multiple)
            sw_fp = folder / "swinir-fp32.onnx"
            export_onnx(swinir, sw_fp)
            qmodel = calibrated(swinir, "minmax", "2dquant", calibration_batch(args.train_dir, 4, n=32, patch=64,
                                                                                seed=0))
            rows.append({"method": "minmax", **row("swinir-light", 4, swinir, qmodel, set5x4, x4, folder, args,
                                                   sw_fp)})
            print(json.dumps(rows[-1]), flush=True)
    env = {"machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPUs available",
           "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "threads": args.threads,
           "lr_size": f"{args.lr_size}x{args.lr_size} (IMDN), {args.lr_size // 2}x{args.lr_size // 2} (SwinIR)",
           "image": set5[0].name, "runs": args.runs, "warmup": args.warmup, "fp_psnr": fp_psnr}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, env))
    args.out.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
