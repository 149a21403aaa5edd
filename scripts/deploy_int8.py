"""Regenerate results/reference/deploy-int8.md (+ .json): the deploy scope in OpenVINO and onnxruntime, beside the
runtimes' own PTQ, with the PSNR each runtime actually delivers.

    OMP_NUM_THREADS=1 python scripts/deploy_int8.py --data-root DATA/benchmark --train-dir DATA/train \
        --weights-dir WEIGHTS --out results/reference/deploy-int8.md

Per model (IMDN x2/x4 and IMDTN x4 official weights, SwinIR-light x4 shipped weights):
  * one calibration batch (`bench quantize`'s default: 32 LR patches of 64x64 from --train-dir, seed 0);
  * each method in the `deploy` scope at W8A8 and W7A8 (7-bit weights: what CPUs without VNNI execute exactly,
    bench/export/cpu.py), exported to ONNX QDQ; the peers (onnxruntime quantize_static with MinMax, Entropy and
    Percentile calibrators; NNCF quantize) on the same FP32 ONNX model and batch, at W8A8 with their defaults
    (--peers8) and at W7A8 with onnxruntime's reduce_range and NNCF's overflow fix on every layer (--peers7);
  * PSNR/SSIM (Y, border = scale) of the fake-quant model and of the int8 model run by OpenVINO and onnxruntime,
    on --datasets;
  * file sizes: the .onnx and the OpenVINO IR (.xml + .bin) of each int8 model;
  * latency, LR --lr-size, --threads threads: in OpenVINO FP32, BF16 (the FP32 graph with the bf16 precision
    hint) and every int8 model in one interleaved loop; in onnxruntime FP32 and every int8 ONNX model likewise;
  * for the transformers, OpenVINO's per-layer profile (PERF_COUNT) of the fastest int8 model, summed by layer
    type and execution precision, where int8 is less than 2x FP32; and the int4-weight path (NNCF
    compress_weights INT4_SYM on the linears, activations FP32) with its size and latency.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.data.calib import calibration_batch  # noqa: E402
from bench.data.dataset import load_dataset  # noqa: E402
from bench.evaluate import evaluate  # noqa: E402
from bench.export.cpu import cpu_flags, has_bf16, has_int8_dot_product  # noqa: E402
from bench.export.latency import interleaved_medians, sample_input  # noqa: E402
from bench.export.measure import file_size_fields  # noqa: E402
from bench.export.onnx_qdq import export_onnx  # noqa: E402
from bench.export.ort_model import OnnxSRModel  # noqa: E402
from bench.export.ov_model import OpenVINOSRModel, executed_precision, read_model  # noqa: E402
from bench.export.peers import build_peer  # noqa: E402
from bench.quant import CalibContext, quantize_with_method  # noqa: E402
from methods import create_method  # noqa: E402
from models import create_model  # noqa: E402

# The tables below were measured before the deploy scope left outputs into residual adds float (6b8966a).
SUPERSEDED = ("**Superseded for PSNR, sizes and latency.** These runs predate commit 6b8966a, since which the `deploy` "
              "scope leaves conv and linear outputs that only residual adds read in float: what they measured is "
              "today's `deploy-ort` placement, whose quantizer before a residual add OpenVINO applies without "
              "rounding (hence IMDN x2 MinMax's +0.086 dB in OpenVINO below; docs/scopes.md). `bench run` and "
              "`bench table` now make the current tables: [deploy-int8-imdn.md](deploy-int8-imdn.md) and "
              "[deploy-int8-transformers.md](deploy-int8-transformers.md). This page keeps what records do not "
              "hold: OpenVINO's per-layer profiles of the transformers (measured with the deploy-ort placement) and "
              "the int4-weight path (NNCF compress_weights on the FP32 model, which the placement does not touch).")
OFFICIAL = {("imdn", 2): "imdn/IMDN_x2.pth", ("imdn", 4): "imdn/IMDN_x4.pth",
            ("imdtn", 4): "ntire2022-esr-x4/team09_imdtn.pth"}
PEERS = ("ort-minmax", "ort-entropy", "ort-percentile", "nncf")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "Exception from" not in line]
    return (useful or lines or [""])[-1][:220]


def metrics(model, datasets: dict, scale: int) -> dict:
    out = {}
    for name, dataset in datasets.items():
        result = evaluate(model, dataset, scale, device="cpu", lpips=False, progress=False)
        out[name] = {"psnr": result.psnr, "ssim": result.ssim}
    return out


def ir_size(onnx_or_xml: Path, folder: Path) -> int:
    """Bytes of the OpenVINO IR (.xml + .bin) of a model file, weights kept as they are (no fp16 compression)."""
    return file_size_fields(onnx_or_xml, folder)["openvino_ir_size_bytes"]


def profile(path: Path, lr_size: int, threads: int, multiple: int) -> list[dict]:
    """OpenVINO's per-layer profile of one inference, summed by (layer type, execution precision), largest first."""
    model = read_model(path)
    side = -(-lr_size // multiple) * multiple
    model.reshape({model.inputs[0].any_name: [1, 3, side, side]})
    import openvino as ov
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True,
                                                      "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1})
    request = compiled.create_infer_request()
    x = sample_input(side).numpy()
    for _ in range(3):
        request.infer({0: x})
    totals: dict = defaultdict(float)
    for info in request.get_profiling_info():
        totals[(info.node_type, info.exec_type.split("_")[-1])] += info.real_time.total_seconds() * 1000.0
    whole = sum(totals.values())
    rows = [{"layer": k[0], "exec": k[1], "ms": v, "share": v / whole} for k, v in totals.items()]
    return sorted(rows, key=lambda r: -r["ms"])[:8]


def int4_weights(fp_onnx: Path, folder: Path, shape: list[int]) -> Path:
    """NNCF compress_weights INT4_SYM (group 32 where the input width allows) on every linear/matmul weight."""
    import nncf
    import openvino as ov
    model = read_model(fp_onnx)
    model.reshape({model.inputs[0].any_name: shape})
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_SYM, ratio=1.0, group_size=-1,
                                       all_layers=True)
    compressed.reshape({compressed.inputs[0].any_name: [1, 3, -1, -1]})
    out = folder / "int4-weights.xml"
    ov.save_model(compressed, str(out), compress_to_fp16=False)
    return out


def run_model(name: str, scale: int, weights, args, folder: Path) -> dict:
    fp = create_model(name, scale, weights=weights)
    multiple = int(getattr(fp, "pad_multiple", 1) or 1)
    datasets = {d: load_dataset(d, scale, data_root=args.data_root) for d in args.datasets}
    batch = calibration_batch(args.train_dir, scale, n=args.calib_n, patch=args.calib_patch, seed=0)
    transformer = name in args.transformers
    methods = args.transformer_methods if transformer else args.methods
    w_bits_list = args.w_bits
    fp_path = folder / "fp32.onnx"
    export_onnx(fp, fp_path)
    row = {"model": name, "scale": scale, "weights": str(weights or "shipped"), "fp": metrics(fp, datasets, scale),
           "variants": {}, "sizes": {"fp32.onnx": fp_path.stat().st_size, "fp32 IR": ir_size(fp_path, folder)}}
    log(f"{name} x{scale}: FP {row['fp']}")
    files = {}
    for method in methods:
        for w_bits in w_bits_list:
            label = f"{method} W{w_bits}A8"
            ctx = CalibContext(fp_model=fp, calib_batch=batch, train_dir=args.train_dir, progress=False)
            start = time.time()
            qmodel, _ = quantize_with_method(fp, create_method(method, **args.params.get(method, {})), w_bits, 8, ctx,
                                             scope="deploy")
            qmodel.eval()
            seconds = time.time() - start
            path = folder / f"{method}-w{w_bits}.onnx"
            export_onnx(qmodel, path)
            files[label] = path
            row["variants"][label] = {"kind": "project", "calib_seconds": seconds,
                                      "fake_quant": metrics(qmodel, datasets, scale),
                                      "openvino": metrics(OpenVINOSRModel(path, args.threads), datasets, scale),
                                      "onnxruntime": metrics(OnnxSRModel(path, args.threads), datasets, scale)}
            row["sizes"][label] = {"onnx": path.stat().st_size, "ir": ir_size(path, folder)}
            log(f"{name} x{scale} {label}: {row['variants'][label]}")
    peer_runs = [(peer, False) for peer in args.peers8 if 8 in w_bits_list]
    peer_runs += [(peer, True) for peer in args.peers7 if 7 in w_bits_list]
    for peer_name, reduce_range in peer_runs:
        peer = f"{peer_name} W{7 if reduce_range else 8}A8"
        try:
            path = build_peer(peer_name, fp_path, folder / "peers", batch, reduce_range)
        except Exception as exc:  # a peer that cannot quantize this graph is a finding, not a crash
            row["variants"][peer] = {"kind": "peer", "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            log(f"{name} x{scale} {peer}: failed: {exc}")
            continue
        files[peer] = path
        entry = {"kind": "peer"}
        runners = {"openvino": OpenVINOSRModel} | ({"onnxruntime": OnnxSRModel} if path.suffix == ".onnx" else {})
        for runtime, runner in runners.items():
            try:
                entry[runtime] = metrics(runner(path, args.threads), datasets, scale)
            except Exception as exc:  # a runtime that cannot run a peer's file is a finding, not a crash
                entry.setdefault("errors", {})[runtime] = f"{type(exc).__name__}: {_first_line(exc)}"
                log(f"{name} x{scale} {peer} in {runtime}: failed: {_first_line(exc)}")
        row["variants"][peer] = entry
        row["sizes"][peer] = {"onnx": path.stat().st_size if path.suffix == ".onnx" else None,
                              "ir": ir_size(path, folder)}
        log(f"{name} x{scale} {peer}: {entry}")
    if transformer:
        int4 = int4_weights(fp_path, folder, [1, 3, args.lr_size, args.lr_size])
        files["int4 weights (NNCF INT4_SYM, FP32 activations)"] = int4
        row["sizes"]["int4 weights (NNCF INT4_SYM, FP32 activations)"] = {"onnx": None, "ir": ir_size(int4, folder)}
        row["variants"]["int4 weights (NNCF INT4_SYM, FP32 activations)"] = {
            "kind": "runtime weight compression",
            "openvino": metrics(OpenVINOSRModel(int4, args.threads), datasets, scale)}
    row["latency"] = latency(fp_path, files, args, multiple)
    log(f"{name} x{scale} latency: {row['latency']}")
    if transformer:
        ours = [k for k in files if k in row["latency"]["openvino"] and row["variants"][k].get("kind") == "project"]
        best = min(ours, key=lambda k: row["latency"]["openvino"][k])  # the fastest of the project's int8 models
        if row["latency"]["openvino"]["FP32"] / row["latency"]["openvino"][best] < 2.0:
            row["profile"] = {"model": best, "int8": profile(files[best], args.lr_size, args.threads, multiple),
                              "fp32": profile(fp_path, args.lr_size, args.threads, multiple)}
    return row


def _runs(model, x) -> bool:
    try:
        model.run_numpy(x)
        return True
    except Exception:
        return False


def latency(fp_path: Path, files: dict, args, multiple: int) -> dict:
    side = -(-args.lr_size // multiple) * multiple
    x = sample_input(side).numpy()
    ov_models = {"FP32": OpenVINOSRModel(fp_path, args.threads, "fp32"),
                 "BF16": OpenVINOSRModel(fp_path, args.threads, "bf16")}
    ov_models.update({label: OpenVINOSRModel(path, args.threads) for label, path in files.items()})
    executed = executed_precision(ov_models["BF16"].compiled(x.shape))
    ov_models = {label: m for label, m in ov_models.items() if _runs(m, x)}
    ov = interleaved_medians({k: (lambda m=m: m.run_numpy(x)) for k, m in ov_models.items()}, args.runs, args.warmup)
    ort_models = {"FP32": OnnxSRModel(fp_path, args.threads)}
    ort_models.update({label: OnnxSRModel(path, args.threads) for label, path in files.items()
                       if path.suffix == ".onnx"})
    ort_models = {label: m for label, m in ort_models.items() if _runs(m, x)}
    ort = interleaved_medians({k: (lambda m=m: m.run_numpy(x)) for k, m in ort_models.items()}, args.runs,
                              args.warmup)
    return {"openvino": ov, "onnxruntime": ort, "bf16_executed_as": executed, "lr_size": side,
            "threads": args.threads, "runs": args.runs, "warmup": args.warmup}


# ------------------------------------------------------------------------------------------ markdown

def _fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[dict], env: dict, args) -> str:
    lines = ["# Deployable int8: the `deploy` scope in OpenVINO and onnxruntime, beside the runtimes' own PTQ", "",
             SUPERSEDED, "",
             "Regenerate: one run per model (each writes its .md and .json), then this page from their JSON files:", "",
             *[f"    {command}" for command in env.get("commands", [env.get("command", "")])],
             "    python scripts/deploy_int8.py --render RUN.json ... --out results/reference/deploy-int8.md", "",
             f"Measured at commit {env['commit']}, {env['threads']} thread(s), warm: one warm-up run per model before "
             f"the {env['runs']} timed interleaved runs, on a machine shared with other jobs (ratios are interleaved "
             f"in one process; absolute times are not comparable across models).", "",
             f"CPU: {env['cpu']} ({env['cores']} cores); int8 dot product (VNNI/AMX): {env['vnni']}; bf16: "
             f"{env['bf16']}. OpenVINO {env['openvino']}, onnxruntime {env['onnxruntime']}, NNCF {env['nncf']}.", "",
             "PSNR/SSIM: Y channel, border = scale. *fake quant* is the project's model in PyTorch; *OpenVINO* and "
             "*onnxruntime* are the same ONNX file run by each runtime's int8 kernels. Peers are the runtimes' own "
             "PTQ on the same FP32 model and calibration batch. Latency: median ms, LR side in the header, "
             "interleaved in one process per runtime; speed-up = FP32 / int8 of the same runtime.", ""]
    if not env["vnni"]:
        lines += ["**This CPU has no VNNI/AMX.** Its int8 kernels multiply u8 activations by s8 weights with "
                  "`vpmaddubsw`, which saturates pairs of products in int16: with 8-bit weights the runtimes' "
                  "PSNR falls far below the fake quant's (W8A8 rows), for the runtimes' own PTQ as well. 7-bit "
                  "weights (W7A8, onnxruntime's `reduce_range`) fit and run at the same speed. The issue's 3.5x "
                  "target assumes VNNI/AMX; the int8 peak on this CPU is the peers' speed-up below.", ""]
    for row in rows:
        name, scale = row["model"], row["scale"]
        datasets = list(row["fp"])
        lat = row["latency"]
        title = f"## {name} x{scale}" + (f" ({row['title']})" if row.get("title") else "")
        measured = f"Measured at commit {row['commit']}. " if row.get("commit") else ""
        lines += [title, "",
                  measured + f"Weights: {row['weights']}. FP32: " + ", ".join(
                      f"{d} {row['fp'][d]['psnr']:.2f} / {row['fp'][d]['ssim']:.4f}" for d in datasets) + ".", ""]
        header = ["model", "kind"]
        for d in datasets:
            header += [f"{d} fake quant", f"{d} OpenVINO", f"{d} onnxruntime"]
        header += ["IR KB", "onnx KB", f"OpenVINO ms (LR {lat['lr_size']})", "OV speed-up",
                   "onnxruntime ms", "ORT speed-up"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        ov, ort = lat["openvino"], lat["onnxruntime"]
        lines.append("| FP32 | - | " + " | ".join(
            f"{row['fp'][d]['psnr']:.2f}" if i == 0 else "-" for d in datasets for i in range(3)) +
            f" | {row['sizes']['fp32 IR'] / 1000:.1f} | {row['sizes']['fp32.onnx'] / 1000:.1f} | "
            f"{ov['FP32']:.1f} | 1.00 | {ort['FP32']:.1f} | 1.00 |")
        lines.append(f"| BF16 hint (ran as {lat['bf16_executed_as']}) | - | " + " | ".join("-" for _ in datasets
                                                                                        for _ in range(3)) +
                     f" | - | - | {ov['BF16']:.1f} | {ov['FP32'] / ov['BF16']:.2f} | - | - |")
        for label, v in row["variants"].items():
            if "error" in v:
                lines.append(f"| {label} | {v['kind']}: failed ({v['error']}) |" + " |" * (len(header) - 2))
                continue
            cells = []
            for d in datasets:
                for where in ("fake_quant", "openvino", "onnxruntime"):
                    failed = where in v.get("errors", {})
                    cells.append("fails" if failed else _fmt(v.get(where, {}).get(d, {}).get("psnr")))
            size = row["sizes"].get(label, {})
            ir = _fmt(size.get("ir") / 1000 if size.get("ir") else None, 1)
            onnx = _fmt(size.get("onnx") / 1000 if size.get("onnx") else None, 1)
            ov_ms, ort_ms = ov.get(label), ort.get(label)
            lines.append(f"| {label} | {v['kind']} | " + " | ".join(cells) +
                         f" | {ir} | {onnx} | {_fmt(ov_ms, 1)} | {_fmt(ov['FP32'] / ov_ms if ov_ms else None)} | "
                         f"{_fmt(ort_ms, 1)} | {_fmt(ort['FP32'] / ort_ms if ort_ms else None)} |")
        lines.append("")
        for label, v in row["variants"].items():
            for runtime, error in v.get("errors", {}).items():
                lines.append(f"* {label} does not run in {runtime}: `{error}`")
        lines.append("")
        ssim = [f"{label}: " + ", ".join(f"{d} {v[w][d]['ssim']:.4f} ({w.replace('_', ' ')})" for d in datasets
                                         for w in ("fake_quant", "openvino") if w in v)
                for label, v in row["variants"].items() if "error" not in v]
        lines += ["SSIM: " + "; ".join(ssim) + ".", ""]
        if "profile" in row:
            p = row["profile"]
            lines += [f"OpenVINO per-layer profile (PERF_COUNT, one inference, LR {lat['lr_size']}, summed by layer "
                      f"type and execution precision; int8 below 2x FP32): where the time goes in `{p['model']}` "
                      f"(rows `int8`) and in FP32:", "",
                      "| model | layer type | executed as | ms | share |", "|---|---|---|---|---|"]
            for which in ("int8", "fp32"):
                for r in p[which]:
                    lines.append(f"| {which} | {r['layer']} | {r['exec']} | {r['ms']:.1f} | {100 * r['share']:.0f} % |")
            lines.append("")
    return "\n".join(lines) + "\n"


def render(json_files: list[Path], out: Path) -> int:
    """Write the markdown of several runs' JSON files (one model per run, so each regenerates on its own)."""
    parts = [json.loads(Path(f).read_text()) for f in json_files]
    rows = [{**row, "commit": part["env"]["commit"], "title": part["env"].get("title")}
            for part in parts for row in part["rows"]]
    env = dict(parts[0]["env"])
    commits = sorted({part["env"]["commit"] for part in parts})
    env["commit"] = ", ".join(commits)
    env["commands"] = [part["env"].get("command", "(command not recorded)") for part in parts]
    out.write_text(markdown(rows, env, None))
    log(f"wrote {out} from {len(json_files)} runs")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render", type=Path, nargs="+", default=None, metavar="JSON",
                   help="only write --out from these runs' JSON files (each run's command is in the file)")
    p.add_argument("--data-root", type=Path)
    p.add_argument("--train-dir", type=Path)
    p.add_argument("--weights-dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--models", default="imdn:2,imdn:4,imdtn:4,swinir-light:4")
    p.add_argument("--methods", default="minmax,percentile,emmse,dobi")
    p.add_argument("--transformer-methods", default="minmax,dobi")
    p.add_argument("--transformers", default="imdtn,swinir-light")
    p.add_argument("--w-bits", default="8,7")
    p.add_argument("--peers8", default="ort-minmax,nncf", help="peers with their default (8-bit) weights")
    p.add_argument("--peers7", default=",".join(PEERS),
                   help="peers with 7-bit weights (onnxruntime reduce_range, NNCF overflow fix on every layer)")
    p.add_argument("--params", action="append", default=[], metavar="METHOD=JSON",
                   help="a method's parameters, e.g. 2dquant='{\"iters\": 100, \"batch\": 4}' (repeatable)")
    p.add_argument("--datasets", default="Set5,Set14")
    p.add_argument("--calib-n", type=int, default=32)
    p.add_argument("--calib-patch", type=int, default=64)
    p.add_argument("--lr-size", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.render:
        return render(args.render, args.out)
    if not (args.data_root and args.train_dir and args.weights_dir):
        p.error("--data-root, --train-dir and --weights-dir are needed to measure (or give --render JSON ...)")
    for key in ("methods", "transformer_methods", "transformers", "peers8", "peers7", "datasets"):
        setattr(args, key, [v for v in getattr(args, key).split(",") if v])
    args.w_bits = [int(v) for v in args.w_bits.split(",")]
    args.params = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.params)}
    torch.set_num_threads(args.threads)
    import subprocess

    import nncf
    import onnxruntime
    import openvino
    env = {"commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip(),
           "threads": args.threads, "runs": args.runs, "cpu": platform.processor() or platform.machine(),
           "cores": len(__import__("os").sched_getaffinity(0)), "vnni": has_int8_dot_product(), "bf16": has_bf16(),
           "cpu_flags_avx": sorted(f for f in cpu_flags() if "avx" in f or "amx" in f or "vnni" in f),
           "openvino": openvino.__version__, "onnxruntime": onnxruntime.__version__, "nncf": nncf.__version__,
           "command": "OMP_NUM_THREADS=1 python scripts/deploy_int8.py " + " ".join(sys.argv[1:])}
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            env["cpu"] = line.split(":", 1)[1].strip()
            break
    rows = []
    out_json = args.out.with_suffix(".json")
    for spec in args.models.split(","):
        name, scale = spec.split(":")
        scale = int(scale)
        weights = OFFICIAL.get((name, scale))
        weights = str(args.weights_dir / weights) if weights else None
        with tempfile.TemporaryDirectory(prefix="deploy-int8-") as tmp:
            rows.append(run_model(name, scale, weights, args, Path(tmp)))
        out_json.write_text(json.dumps({"env": env, "rows": rows}, indent=1, default=str))
        args.out.write_text(markdown(rows, env, args))
    log(f"wrote {args.out} and {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
