"""Regenerate results/reference/onnx-int4.md (+ .json): 4-bit weights stored as UINT4 in ONNX (opset 21) beside uint8.

    OMP_NUM_THREADS=1 python scripts/onnx_int4.py --data-root DATA/benchmark --train-dir DATA/train \
        --imdn-weights WEIGHTS/imdn/IMDN_x2.pth --out results/reference/onnx-int4.md

Protocol, per row (IMDN x2 official weights, fp-edges scope, MinMax and DOBI at W4A8; SwinIR-light x4 shipped
weights, 2dquant scope, MinMax W4A8; activations stay 8-bit because the QDQ export writes uint8 activations):
  * one seeded calibration batch (32 LR patches of 64x64 from --train-dir), bounds by the method;
  * the same calibrated model exported twice: `export_onnx(opset=17)` (weights as uint8 codes, today's default) and
    `export_onnx(opset=21)` (weights of <= 4 bits as UINT4); the .onnx file sizes;
  * weights: the UINT4 codes, zero points and scales against the uint8 export's (must be identical), and the
    dequantized weights (q - z) * s against the fake-quant weights of the model with the ONNX integer grids
    (`with_integer_bounds`: the grid both exports use): largest absolute difference;
  * Set5 PSNR (Y, border = scale): fake quant, integer grids in torch, onnxruntime on each export; largest absolute
    difference of the two exports' outputs on the latency input;
  * latency: FP32, uint8-weight QDQ and UINT4-weight QDQ ONNX in one onnxruntime process, timed in turns after
    warm-up, median of --runs, intra_op_num_threads = --threads, on the top-left --lr-size crop of Set5's first LR
    image; beside it the paper rule's speed-up (bench.cost).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
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
from bench.export.onnx_qdq import constant_values, export_onnx, integer_grid, with_integer_bounds  # noqa: E402
from bench.export.ort_model import OnnxSRModel  # noqa: E402
from bench.inference import to_tensor  # noqa: E402
from bench.quant import CalibContext, quantize_with_method, weight_quantizers  # noqa: E402
from methods import create_method  # noqa: E402
from models import create_model  # noqa: E402

W_BITS, A_BITS = 4, 8


def psnr(model, dataset, scale: int) -> float:
    return evaluate(model, dataset, scale, "cpu", lpips=False, progress=False).psnr


def lr_input(dataset, size: int, multiple: int) -> np.ndarray:
    side = -(-size // multiple) * multiple
    return np.ascontiguousarray(to_tensor(dataset[0].lr)[..., :side, :side].numpy())


def dequantized_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Weight initializer name -> (codes as int64, zero points, scales, ONNX data type) of every DequantizeLinear
    whose input is an initializer (the folded weights)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    values = constant_values(graph)  # zero points may come through Identity nodes (SwinIR)
    out = {}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            codes = inits[node.input[0]]
            out[node.input[0]] = (numpy_helper.to_array(codes).astype(np.int64), values[node.input[2]].astype(np.int64),
                                  values[node.input[1]].astype(np.float32), codes.data_type)
    return out


def _dequantize(codes: np.ndarray, zero_point: np.ndarray, scale: np.ndarray) -> np.ndarray:
    shape = [-1] + [1] * (codes.ndim - 1) if scale.ndim else []  # per output channel (axis 0) or per tensor
    return ((codes - zero_point.reshape(shape)).astype(np.float32) * scale.reshape(shape)).astype(np.float32)


def weight_checks(path17: Path, path21: Path, qmodel) -> dict:
    """UINT4 vs uint8 codes (identical?), and max |(q - z) * s - fake-quant weight on the integer grid|."""
    import onnx

    w17, w21 = dequantized_weights(path17), dequantized_weights(path21)
    # The exporter's names do not spell module paths (Sequential children are scoped twice): match each ONNX
    # weight to its quantizer by shape and float32 scale, which the export copies from the integer grid.
    with torch.no_grad():
        fakes = {(tuple(w.shape), integer_grid(q).scale.numpy().tobytes()): grid_q(grid_w).numpy()
                 for (_, q, w), (_, grid_q, grid_w) in zip(weight_quantizers(qmodel),
                                                            weight_quantizers(with_integer_bounds(qmodel))) if q.enabled}
    identical, max_diff, uint4, uint4_bytes, uint8_bytes = True, 0.0, 0, 0, 0
    for name, (codes, zp, scale, dtype) in w21.items():
        codes17, zp17, scale17, _ = w17[name]
        identical &= bool(np.array_equal(codes, codes17) and np.array_equal(zp, zp17) and np.array_equal(scale, scale17))
        fake = fakes[(codes.shape, scale.tobytes())]
        max_diff = max(max_diff, float(np.abs(_dequantize(codes, zp, scale) - fake).max()))
        if dtype == onnx.TensorProto.UINT4:
            uint4 += 1
            uint4_bytes += -(-codes.size // 2)
            uint8_bytes += codes.size
    return {"weights": len(w21), "uint4_weights": uint4, "codes_identical": identical,
            "max_abs_diff_dequantized_vs_fake_quant": max_diff, "uint4_code_bytes": uint4_bytes,
            "same_codes_as_uint8_bytes": uint8_bytes}


def row(name: str, scale: int, method: str, fp_model, qmodel, dataset, x, folder: Path, args, fp_path: Path) -> dict:
    stem = f"{name}-{qmodel.quant_scope}-{method}"
    p17, p21 = folder / f"{stem}-17.onnx", folder / f"{stem}-21.onnx"
    export_onnx(qmodel, p17)
    report = export_onnx(qmodel, p21, opset=21)
    fp, m17, m21 = (OnnxSRModel(p, args.threads) for p in (fp_path, p17, p21))
    medians = interleaved_medians({"fp32": lambda: fp.run_numpy(x), "uint8": lambda: m17.run_numpy(x),
                                   "uint4": lambda: m21.run_numpy(x)}, args.runs, args.warmup)
    return {
        "model": name, "scale": scale, "scope": qmodel.quant_scope, "method": method, "bits": qmodel.quant_config.tag,
        "onnx_bytes_opset17_uint8": p17.stat().st_size, "onnx_bytes_opset21_uint4": p21.stat().st_size,
        "fp32_onnx_bytes": fp_path.stat().st_size, "export_uint4_weights": report.uint4_weights,
        **weight_checks(p17, p21, qmodel),
        "max_abs_diff_outputs_uint4_vs_uint8": float(np.abs(m21.run_numpy(x) - m17.run_numpy(x)).max()),
        "psnr_fake_quant": psnr(qmodel, dataset, scale),
        "psnr_integer_grid_torch": psnr(with_integer_bounds(qmodel), dataset, scale),
        "psnr_ort_uint8": psnr(m17, dataset, scale), "psnr_ort_uint4": psnr(m21, dataset, scale),
        "fp32_ms": medians["fp32"], "uint8_ms": medians["uint8"], "uint4_ms": medians["uint4"],
        "speedup_uint8": medians["fp32"] / medians["uint8"], "speedup_uint4": medians["fp32"] / medians["uint4"],
        "predicted_speedup": analyze(fp_model, name, scale, qmodel).speedup(),
    }


def calibrated(fp_model, method: str, scope: str, batch) -> torch.nn.Module:
    ctx = CalibContext(fp_model=fp_model, calib_batch=batch, progress=False)
    qmodel, _ = quantize_with_method(fp_model, create_method(method), W_BITS, A_BITS, ctx, scope=scope)
    return qmodel.eval()


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# 4-bit weights as UINT4 in ONNX (opset 21) beside uint8 codes (opset 17): file size, weights, PSNR, latency",
        "",
        "Regenerate: `OMP_NUM_THREADS=1 python scripts/onnx_int4.py --data-root DATA/benchmark --train-dir DATA/train "
        "--imdn-weights WEIGHTS/imdn/IMDN_x2.pth --out results/reference/onnx-int4.md` (protocol in the script's "
        "docstring).",
        "",
        f"Environment: {env['machine']}; onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, torch {env['torch']}; "
        f"intra_op_num_threads = {env['threads']}, inter_op 1; LR input {env['lr_size']} (crop of Set5 "
        f"`{env['image']}`), median of {env['runs']} interleaved runs (FP32, uint8, UINT4) after {env['warmup']} "
        f"warm-up; shared, noisy machine: ratios are from one process, absolute times are indicative.",
        "",
        "| model | scope | method | W/A | .onnx bytes uint8 (opset 17) | .onnx bytes UINT4 (opset 21) | ratio "
        "| UINT4 weights | codes = uint8 export | max abs(dequantized - fake quant) | PSNR fake quant "
        "| PSNR int grid (torch) | PSNR ORT uint8 | PSNR ORT UINT4 | FP32 ms | uint8 ms | UINT4 ms "
        "| measured speed-up uint8 / UINT4 | paper-rule speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["model"], r["scope"], r["method"], r["bits"].upper(), f"{r['onnx_bytes_opset17_uint8']:,}",
                 f"{r['onnx_bytes_opset21_uint4']:,}",
                 f"{r['onnx_bytes_opset21_uint4'] / r['onnx_bytes_opset17_uint8']:.3f}",
                 f"{r['uint4_weights']} of {r['weights']}", "yes" if r["codes_identical"] else "NO",
                 f"{r['max_abs_diff_dequantized_vs_fake_quant']:.1e}", f"{r['psnr_fake_quant']:.3f}",
                 f"{r['psnr_integer_grid_torch']:.3f}", f"{r['psnr_ort_uint8']:.3f}", f"{r['psnr_ort_uint4']:.3f}",
                 f"{r['fp32_ms']:.1f}", f"{r['uint8_ms']:.1f}", f"{r['uint4_ms']:.1f}",
                 f"{r['speedup_uint8']:.2f}x / {r['speedup_uint4']:.2f}x", f"{r['predicted_speedup']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Largest |UINT4 output - uint8 output| on the latency input: "
              + ", ".join(f"{r['model']} {r['method']} {r['max_abs_diff_outputs_uint4_vs_uint8']:.1e}" for r in rows)
              + " (outputs in [0, 1]).",
              "Bytes of the UINT4 weight codes vs the same codes as uint8: "
              + ", ".join(f"{r['model']} {r['method']} {r['uint4_code_bytes']:,} vs {r['same_codes_as_uint8_bytes']:,}"
                          for r in rows) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--train-dir", type=Path, required=True)
    ap.add_argument("--imdn-weights", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "reference" / "onnx-int4.md")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--lr-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import onnx
    import onnxruntime

    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-int4-") as tmp:
        folder = Path(tmp)
        set5 = load_dataset("Set5", 2, data_root=args.data_root)
        imdn = create_model("imdn", 2, weights=args.imdn_weights)
        x = lr_input(set5, args.lr_size, 1)
        fp_path = folder / "imdn-fp32.onnx"
        export_onnx(imdn, fp_path)
        batch = calibration_batch(args.train_dir, 2, n=32, patch=64, seed=0)
        for method in ("minmax", "dobi"):
            rows.append(row("imdn", 2, method, imdn, calibrated(imdn, method, "fp-edges", batch), set5, x, folder,
                            args, fp_path))
            print(json.dumps(rows[-1]), flush=True)
        set5x4 = load_dataset("Set5", 4, data_root=args.data_root)
        swinir = create_model("swinir-light", 4)
        x4 = lr_input(set5x4, args.lr_size // 2, swinir.pad_multiple)
        sw_fp = folder / "swinir-fp32.onnx"
        export_onnx(swinir, sw_fp)
        qmodel = calibrated(swinir, "minmax", "2dquant", calibration_batch(args.train_dir, 4, n=32, patch=64, seed=0))
        rows.append(row("swinir-light", 4, "minmax", swinir, qmodel, set5x4, x4, folder, args, sw_fp))
        print(json.dumps(rows[-1]), flush=True)
    env = {"machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs available",
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
           "threads": args.threads,
           "lr_size": f"{args.lr_size}x{args.lr_size} (IMDN), {args.lr_size // 2}x{args.lr_size // 2} (SwinIR)",
           "image": set5[0].name, "runs": args.runs, "warmup": args.warmup}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, env))
    args.out.with_suffix(".json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
