"""ONNX QDQ export (bench.export.onnx_qdq): the graph's QDQ nodes, integer zero points, onnxruntime outputs."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from bench.cli import main  # noqa: E402
from bench.errors import ConfigError  # noqa: E402
from bench.export.onnx_qdq import export_onnx, integer_grid, with_integer_bounds  # noqa: E402
from bench.export.ort_model import OnnxSRModel  # noqa: E402
from bench.quant import (  # noqa: E402
    FakeQuantizer,
    QuantConfig,
    activation_quantizers,
    quantize_model,
    quantizers,
    weight_quantizers,
)


class TwoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 6, 3, padding=1)
        self.tail = nn.Conv2d(6, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(nn.functional.leaky_relu(self.body(x), 0.1))


def _minmax(model: nn.Module, w_bits: int = 8, a_bits: int = 8, scope: str = "ptq4sr", x=None) -> nn.Module:
    from bench.quant import CalibContext, quantize_with_method
    from methods import create_method
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) if x is None else x
    qmodel, _ = quantize_with_method(model, create_method("minmax"), w_bits, a_bits,
                                     CalibContext(fp_model=model, calib_batch=x, progress=False), scope=scope)
    return qmodel.eval()


@pytest.fixture(scope="module")
def two_conv():
    torch.manual_seed(0)
    return TwoConv().eval()


def test_integer_grid_rounds_the_zero_point_and_keeps_the_step():
    q = FakeQuantizer(8)
    q.set_bounds(-0.3, 0.9)                      # s = 1.2/255, -l/s = 63.75 -> z = 64
    grid = integer_grid(q)
    assert int(grid.zero_point) == 64
    assert float(grid.scale) == pytest.approx(1.2 / 255, rel=1e-6)
    lower, upper = grid.bounds()
    assert float(upper - lower) == pytest.approx(1.2, rel=1e-6)   # same step, grid moved by 0.25 step
    assert float(lower) == pytest.approx(-64 * 1.2 / 255, rel=1e-6)
    q.set_bounds(0.2, 1.0)                       # no 0 in the range: widened to [0, 1]
    grid = integer_grid(q)
    assert (int(grid.zero_point), grid.widened) == (0, 1)
    assert float(grid.scale) == pytest.approx(1 / 255, rel=1e-6)


def test_graph_holds_one_qdq_pair_per_quantizer_and_matches_fake_quant(tmp_path, two_conv):
    # ptq4sr on a two-conv model: both convs are edges, at 8 bits, per-channel weights.
    qmodel = _minmax(two_conv, scope="ptq4sr")
    acts, weights = len(activation_quantizers(qmodel)), len(weight_quantizers(qmodel))
    assert (acts, weights) == (2, 2)
    report = export_onnx(qmodel, tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    ops = Counter(n.op_type for n in graph.node)
    assert (ops["QuantizeLinear"], ops["DequantizeLinear"], ops["Conv"]) == (2, 4, 2)
    assert (report.activation_qdq, report.weight_qdq) == (2, 2)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        x_dq, w_dq = producers[conv.input[0]], producers[conv.input[1]]
        assert (x_dq.op_type, w_dq.op_type) == ("DequantizeLinear", "DequantizeLinear")
        assert inits[w_dq.input[0]].dtype == np.uint8          # weights stored as integer codes
        assert inits[w_dq.input[1]].shape == (conv_out := inits[w_dq.input[0]].shape[0],)  # per-channel scales
        assert conv_out in (3, 6)
        assert producers[x_dq.input[0]].op_type == "QuantizeLinear"

    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    ort = OnnxSRModel(tmp_path / "m.onnx")(x)
    with torch.no_grad():
        fake, integer = qmodel(x), with_integer_bounds(qmodel)(x)
    # Same grid as the integer-bounds model: float rounding only (a tie may flip one code).
    assert (ort - integer).abs().max().item() < 1e-2
    # Against fake quant: every quantizer's grid moves by at most half a step, so each operand moves by at most
    # one step; bound the output by the tail conv's response to a one-step change of every input and weight.
    tail = qmodel.tail
    s_in = float(integer_grid(tail.input_quant).scale)
    s_w = integer_grid(tail.weight_quant).scale.view(-1, 1, 1, 1)
    with torch.no_grad():
        x_tail = tail.input_quant(nn.functional.leaky_relu(qmodel.body(x), 0.1)).abs()
        bound = (nn.functional.conv2d(torch.full_like(x_tail, s_in), tail.weight_quant(tail.weight).abs(), padding=1)
                 + nn.functional.conv2d(x_tail, s_w.expand_as(tail.weight), padding=1))
    assert ((ort - fake).abs() <= bound + 1e-5).float().mean().item() > 0.99
    assert 0 < (ort - fake).abs().max().item()


def test_swinir_attention_matmuls_get_qdq_on_both_operands(tmp_path, swinir_random):
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    qmodel = _minmax(swinir_random, scope="2dquant", x=x)
    report = export_onnx(qmodel, tmp_path / "swinir.onnx", sample_size=8)
    graph = onnx.load(str(tmp_path / "swinir.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}

    def source(name):  # through shape-only ops that the exporter may place between DQ and MatMul
        node = producers.get(name)
        while node is not None and node.op_type in ("Transpose", "Reshape", "Mul"):
            node = producers.get(node.input[0])
        return None if node is None else node.op_type

    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    both = [n for n in matmuls if source(n.input[0]) == source(n.input[1]) == "DequantizeLinear"]
    blocks = sum(1 for name, _ in swinir_random.named_modules() if name.endswith("attn.matmul_qk"))
    assert len(both) >= 2 * blocks    # q@k^T and attn@v of every block (+ the linears' x @ W^T)
    assert report.activation_qdq == len(activation_quantizers(qmodel))
    # Every weight is stored as uint8 codes, the linears' too (their zero points reach the graph through Identity
    # nodes, which the first version did not follow: it left 141 of 144 weights in float32).
    inits = {t.name: t.data_type for t in graph.initializer}
    stored = [n for n in graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) == onnx.TensorProto.UINT8]
    assert len(stored) == report.weight_qdq == len(weight_quantizers(qmodel)) == 144
    assert sum(n.op_type == "QuantizeLinear" for n in graph.node) == report.activation_qdq
    y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    ort = OnnxSRModel(tmp_path / "swinir.onnx")(y)
    with torch.no_grad():
        integer = with_integer_bounds(qmodel)(y)
    assert (ort - integer).abs().max().item() < 0.05


def test_four_bit_activations_are_refused(tmp_path, two_conv):
    qmodel = quantize_model(two_conv, QuantConfig(4, 4, scope="ptq4sr"))
    qmodel.body.input_quant.bits = 4  # ptq4sr keeps edge convs at 8 bits
    for _, q in quantizers(qmodel):
        q.set_bounds(-1, 1)
    with pytest.raises(ConfigError, match=r"has 4-bit activations; the ONNX export writes uint8 activations: "
                                          r"quantize with --a-bits 8"):
        export_onnx(qmodel, tmp_path / "m.onnx")


def test_learned_rounding_weights_are_refused(tmp_path, two_conv):
    from bench.quant.qtypes import make_quantizer, replace_quantizer

    qmodel = _minmax(two_conv, scope="ptq4sr")
    learned = make_quantizer("learned-rounding", qmodel.body.weight_quant)
    learned.set_bounds(qmodel.body.weight_quant.lower, qmodel.body.weight_quant.upper)
    replace_quantizer(qmodel, "body.weight_quant", learned)
    with pytest.raises(ConfigError, match=r"^quantizer body.weight_quant is a learned-rounding quantizer, which ONNX "
                                          r"QuantizeLinear/DequantizeLinear cannot express: export with --format packed"):
        export_onnx(qmodel, tmp_path / "m.onnx")


def test_four_bit_weights_keep_sixteen_codes(tmp_path, two_conv):
    qmodel = _minmax(two_conv, scope="ptq4sr")
    qmodel.body.weight_quant.bits = 4  # ptq4sr puts the edges at 8 bits: make one conv a 4-bit one
    export_onnx(qmodel, tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    uint8 = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    body = next(a for a in uint8 if a.shape == (6, 3, 3, 3))
    assert max(len(np.unique(channel)) for channel in body) <= 16


def test_eval_onnx_on_imdn_matches_fake_quant_within_0_05_db(tmp_path, benchmark_root, train_root, weights_dir):
    from bench.data.calib import calibration_batch
    from bench.data.dataset import load_dataset
    from bench.evaluate import evaluate
    from models import create_model

    fp_model = create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")
    qmodel = _minmax(fp_model, scope="fp-edges", x=calibration_batch(train_root, 2, n=4, patch=32, seed=0))
    export_onnx(qmodel, tmp_path / "imdn.onnx")
    images = list(load_dataset("Set5", 2, data_root=benchmark_root))[:2]
    fake = evaluate(qmodel, images, 2, "cpu", lpips=False, progress=False).psnr
    ort = evaluate(OnnxSRModel(tmp_path / "imdn.onnx"), images, 2, "cpu", lpips=False, progress=False).psnr
    # 41.034 at 1 torch thread, 41.039 at 2 (the convs' summation order moves a few 8-bit roundings): a pinned
    # second decimal would sit on that edge, so the check is to 0.01 dB
    assert fake == pytest.approx(41.036, abs=0.01)
    assert abs(ort - fake) < 0.05
    assert ort == pytest.approx(ORT_IMDN_X2_W8A8_SET5_FIRST2, abs=0.01)


# measured: baby + bird, fp-edges MinMax on 4 patches of 32x32; 41.019 with 1 torch thread, 41.03x with 2
ORT_IMDN_X2_W8A8_SET5_FIRST2 = 41.027


def test_export_cli_refuses_a_file_without_model_and_scale(tmp_path, capsys, two_conv):
    from bench.quant.io import save_quantized
    qmodel = _minmax(two_conv)
    save_quantized(qmodel, tmp_path / "b.pt", {"calib_key": "x"})
    code = main(["export", "--quantized", str(tmp_path / "b.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--threads", "1"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (f"bench: error: {tmp_path / 'b.pt'} does not record its model and scale "
                                               f"(a run's cached calibration): give --model NAME --scale S")


DEPLOY_MATRIX = """
name: deploy
models:
  - {name: imdn, scales: [2], weights: "imdn/IMDN_x{scale}.pth", scope: fp-edges}
datasets:
  - {name: Set5, crop: 32, max_images: 1}
bits: [8]
methods: [minmax]
baselines: []
calibration: {n: 2, patch: 32, seed: 0}
latency: {runs: 1, lr_size: 32, runtime: onnxruntime}
cost: {lr_size: 32}
"""


def test_matrix_records_carry_measured_packed_size_and_onnxruntime_latency(tmp_path, benchmark_root, train_root,
                                                                            weights_dir):
    from bench.runner.execute import RunOptions, run_matrix
    from bench.runner.matrix import load_matrix
    from bench.runner.records import read_records

    matrix = tmp_path / "deploy.yaml"
    matrix.write_text(DEPLOY_MATRIX, encoding="utf-8")
    run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "r", data_root=benchmark_root, weights_dir=weights_dir,
                                               train_root=train_root, progress=False))
    (record,) = read_records(tmp_path / "r" / "records.jsonl")
    # IMDN x2 fp-edges W8A8: 683,520 weight codes at one byte, 43,536 bytes of FP parameters, 17,696 bytes of
    # scales/bounds; the safetensors header holds the names and the metadata (the run's meta: its length varies).
    assert record["model_size_bytes"] == 683_520 + 43_536 + 17_696  # the cost model: codes + FP + bounds
    assert record["packed_size_bytes"] - record["packed_header_bytes"] == record["model_size_bytes"]
    assert record["latency_ort_fp32_ms"] > 0 and record["latency_ort_int8_ms"] > 0
    assert record["latency_ort_speedup"] == pytest.approx(record["latency_ort_fp32_ms"] / record["latency_ort_int8_ms"])
    assert record["latency_ort_threads"] == torch.get_num_threads()


def test_matrix_latency_runtime_is_validated(tmp_path):
    from bench.runner.matrix import load_matrix

    matrix = tmp_path / "deploy.yaml"
    matrix.write_text(DEPLOY_MATRIX.replace("runtime: onnxruntime", "runtime: tensorrt"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"deploy.yaml: latency.runtime: 'tensorrt' is not a runtime; use torch, "
                                          r"onnxruntime or openvino$"):
        load_matrix(matrix)


# ------------------------------------------------------------------------------------------ UINT4 weights

def _four_bit_weights(two_conv) -> nn.Module:
    qmodel = _minmax(two_conv, scope="ptq4sr")
    qmodel.body.weight_quant.bits = qmodel.tail.weight_quant.bits = 4  # ptq4sr keeps the edges at 8 bits
    return qmodel


def _weight_dq(path) -> dict[tuple, tuple]:
    """Weight shape -> (ONNX data type, codes, zero points, scales) of each DequantizeLinear on an initializer."""
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    return {tuple(inits[n.input[0]].dims): (inits[n.input[0]].data_type,
                                            *(numpy_helper.to_array(inits[i]) for i in (n.input[0], n.input[2], n.input[1])))
            for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits}


def test_opset_21_stores_four_bit_weights_as_uint4_with_the_uint8_exports_codes(tmp_path, two_conv):
    qmodel = _four_bit_weights(two_conv)
    export_onnx(qmodel, tmp_path / "u8.onnx")
    report = export_onnx(qmodel, tmp_path / "u4.onnx", opset=21)
    model = onnx.load(str(tmp_path / "u4.onnx"))
    assert (report.opset, report.uint4_weights, report.weight_qdq, report.activation_qdq) == (21, 2, 2, 2)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21
    assert {p.key: p.value for p in model.metadata_props}["quantization"] == "qdq-uint8, uint4 weights"
    u8, u4 = _weight_dq(tmp_path / "u8.onnx"), _weight_dq(tmp_path / "u4.onnx")
    assert sorted(u4) == [(3, 6, 3, 3), (6, 3, 3, 3)]
    inits = {tuple(t.dims): t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT4 and t.dims}
    for shape, (dtype, codes, zero_point, scale) in u4.items():
        assert dtype == onnx.TensorProto.UINT4 and u8[shape][0] == onnx.TensorProto.UINT8
        assert np.array_equal(codes.astype(np.uint8), u8[shape][1])              # the same codes, 0..15
        assert np.array_equal(zero_point.astype(np.uint8), u8[shape][2]) and np.array_equal(scale, u8[shape][3])
        assert len(inits[shape].raw_data) == 81                                   # 162 codes, two per byte
        # (q - z) * s is the fake-quant weight of the model on the ONNX integer grids, up to float32 rounding.
        layer = with_integer_bounds(qmodel).body if shape[0] == 6 else with_integer_bounds(qmodel).tail
        with torch.no_grad():
            fake = layer.weight_quant(layer.weight).numpy()
        dequantized = (codes.astype(np.float32) - zero_point.astype(np.float32).reshape(-1, 1, 1, 1)) \
            * scale.reshape(-1, 1, 1, 1)
        assert np.abs(dequantized - fake).max() < 1e-6
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(2))
    assert torch.equal(OnnxSRModel(tmp_path / "u4.onnx")(x), OnnxSRModel(tmp_path / "u8.onnx")(x))


def test_opset_21_keeps_eight_bit_weights_uint8(tmp_path, two_conv):
    report = export_onnx(_minmax(two_conv, scope="ptq4sr"), tmp_path / "m.onnx", opset=21)
    assert (report.opset, report.uint4_weights) == (21, 0)
    assert {v[0] for v in _weight_dq(tmp_path / "m.onnx").values()} == {onnx.TensorProto.UINT8}


def test_unsupported_opset_is_one_line(tmp_path, two_conv, capsys):
    newest = onnx.defs.onnx_opset_version()
    with pytest.raises(ConfigError, match=rf"^ONNX opset 12 is not supported: use 13\.\.{newest} \(default 17; 21 or "
                                          r"newer stores weights of at most 4 bits as UINT4\)$"):
        export_onnx(_minmax(two_conv), tmp_path / "m.onnx", opset=12)
    assert not (tmp_path / "m.onnx").exists()


def test_export_cli_opset_21_on_fsrcnn_w4a8(tmp_path, capsys):
    from bench.quant.io import save_quantized
    from models import create_model

    fsrcnn = create_model("fsrcnn", 2)                       # shipped weights; `auto` keeps first and last layer FP
    qmodel = _minmax(fsrcnn, w_bits=4, a_bits=8, scope="auto")
    save_quantized(qmodel, tmp_path / "q.pt", {"model": "fsrcnn", "scale": 2})
    sizes = {}
    for opset in (17, 21):
        out = tmp_path / f"m{opset}.onnx"
        assert main(["export", "--quantized", str(tmp_path / "q.pt"), "--format", "onnx", "--out", str(out),
                     "--opset", str(opset), "--threads", "1"]) == 0
        sizes[opset] = out.stat().st_size
    printed = capsys.readouterr().out
    four_bit = sum(1 for _, q, _ in weight_quantizers(qmodel) if q.bits == 4)
    assert four_bit == 6 and f"; {four_bit} weights stored as UINT4; opset 21" in printed  # shrink, 4 maps, expand
    codes = sum(w.numel() for _, q, w in weight_quantizers(qmodel) if q.bits == 4)
    print(f"\nFSRCNN x2 W4A8 .onnx: opset 17 {sizes[17]:,} B, opset 21 {sizes[21]:,} B, {codes:,} 4-bit weights")
    # Half a byte less per 4-bit weight (3,264 B), and per zero point (minus the longer metadata value): 3,305 B.
    assert codes == 6_528 and sizes[17] - sizes[21] == 3_305
    capsys.readouterr()
    assert main(["latency", "--quantized", str(tmp_path / "q.pt"), "--runtime", "onnxruntime", "--opset", "21",
                 "--runs", "1", "--warmup", "0", "--lr-size", "16", "--threads", "1", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["export"]["opset"], record["export"]["uint4_weights"]) == (21, 6)
    assert record["latency"]["quantized_label"] == "int8 QDQ, UINT4 weights (onnxruntime)"
