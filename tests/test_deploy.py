"""The deploy scope (bench/quant/integer_grid.py, scopes.py): integer grids, placement, and what the runtimes make
of its ONNX export: int8 convolutions in OpenVINO and QLinearConv in onnxruntime, the same activation ranges as
onnxruntime's MinMax calibrator, and outputs equal to the fake-quant model's within one quantization step."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.quant import CalibContext, QuantConfig, quantize_model, quantize_with_method, quantizers
from bench.quant.integer_grid import IntegerZeroPointQuantizer, SymmetricQuantizer
from bench.quant.io import load_quantized, save_quantized
from methods import create_method


class SmallResidualSR(nn.Module):
    """Head conv, a residual block (conv, LeakyReLU, conv, add), a concat of two branches, a x2 pixel-shuffle tail:
    the tensors an integer runtime must keep in integers (conv outputs, the add, the concat, the upsampler)."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.body1 = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.LeakyReLU(0.05)
        self.body2 = nn.Conv2d(c, c, 3, padding=1)
        self.branch = nn.Conv2d(c, c, 1)
        self.fuse = nn.Conv2d(2 * c, c, 1)
        self.tail = nn.Conv2d(c, 3 * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.head(x)
        r = f + self.body2(self.act(self.body1(f)))
        return self.shuffle(self.tail(self.fuse(torch.cat([r, self.branch(f)], 1))))


CONVS = 6


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return SmallResidualSR().eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def deploy(model: nn.Module, batch: torch.Tensor, method: str = "minmax", w_bits: int = 8,
           scope: str = "deploy") -> nn.Module:
    qmodel, _ = quantize_with_method(model, create_method(method), w_bits, 8, CalibContext(calib_batch=batch),
                                     scope=scope)
    return qmodel.eval()


# ------------------------------------------------------------------------------------------- the grids

def test_symmetric_grid_is_narrow_range_int_with_zero_point_0():
    q = SymmetricQuantizer(8, "weight", per_channel_axis=0, channels=2)
    q.set_bounds(torch.tensor([-0.3, -2.0]), torch.tensor([0.5, 1.0]))
    w = torch.linspace(-3, 3, 601).repeat(2, 1)
    s = torch.tensor([[0.5 / 127], [2.0 / 127]])        # max(|l|, |u|) / (2^7 - 1)
    expected = torch.clamp(torch.round(w / s), -127, 127) * s
    assert torch.allclose(q(w), expected, atol=1e-6, rtol=0)
    params = q.integer_params()
    assert params.qmin == -127 and params.qmax == 127 and params.zero_point.tolist() == [0, 0]
    four = SymmetricQuantizer(4, "weight")
    four.set_bounds(-1.0, 0.7)                          # 4 bits: codes -7..7, s = 1 / 7
    assert torch.allclose(four(torch.tensor([-2.0, -0.45, 0.0, 0.2, 0.9])).detach(),
                          torch.tensor([-7, -3, 0, 1, 6]) / 7.0, atol=1e-6)


def test_integer_zero_point_grid_is_onnxruntime_formula():
    # onnxruntime: rmin = min(min, 0), rmax = max(max, 0), scale = (rmax - rmin) / 255, zp = round(-rmin / scale)
    q = IntegerZeroPointQuantizer(8, "act")
    q.set_bounds(-0.37, 1.91)
    scale = np.float32((1.91 + 0.37) / 255)
    zp = round(0.37 / scale)
    x = torch.linspace(-1, 3, 997)   # no value at a rounding tie (the two formulas may round a tie apart)
    expected = (np.clip(np.rint(x.numpy() / scale) + zp, 0, 255) - zp) * scale
    assert np.allclose(q(x).detach().numpy(), expected, atol=1e-6)
    positive = IntegerZeroPointQuantizer(8, "act")
    positive.set_bounds(0.2, 1.0)                       # a range without 0 is widened to [0, u]
    assert positive.integer_params().zero_point.item() == 0
    assert torch.allclose(positive(torch.tensor([0.0, 0.31])).detach(), torch.tensor([0.0, 79 / 255]))


def test_grid_bounds_pass_gradients_to_both_bounds():
    q = IntegerZeroPointQuantizer(4, "act")
    q.set_bounds(-0.5, 1.5)
    x = torch.linspace(-1, 2, 97)
    (q(x) - x).pow(2).sum().backward()
    assert q.lower.grad is not None and q.upper.grad is not None
    assert q.lower.grad.abs() > 0 and q.upper.grad.abs() > 0


# ------------------------------------------------------------------------------------------- placement

def test_deploy_scope_places_typed_quantizers_on_inputs_weights_and_outputs(model, batch, tmp_path):
    qmodel = quantize_model(model, QuantConfig(8, 8, scope="deploy"))
    names = dict(quantizers(qmodel))
    assert len(names) == 3 * CONVS                      # weight, input and output of every conv, edges included
    kinds = Counter((name.rsplit(".", 1)[1], q.quant_type) for name, q in names.items())
    assert kinds == {("weight_quant", "int-symmetric"): CONVS, ("input_quant", "int-zero-point"): CONVS,
                     ("output_quant", "int-zero-point"): CONVS}
    calibrated = deploy(model, batch, "dobi")
    loaded = load_quantized(save_quantized(calibrated, tmp_path / "q.pt", {}), model).eval()
    with torch.no_grad():
        assert torch.equal(loaded(batch), calibrated(batch))


@pytest.mark.parametrize("method", ["minmax", "percentile", "emmse", "dobi"])
def test_range_methods_calibrate_every_deploy_quantizer(model, batch, method):
    qmodel = deploy(model, batch, method)
    assert all(q.calibrated for _, q in quantizers(qmodel))
    with torch.no_grad():
        error = (qmodel(batch) - model(batch)).abs().max().item()
    assert error < 0.05


def test_minmax_output_ranges_are_each_conv_outputs_min_and_max(model, batch):
    # MinMax observes the FP model: each output quantizer's (l, u) is its conv's FP output range on the batch.
    qmodel = deploy(model, batch, "minmax")
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: outputs.__setitem__(name, o))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    for name, out in outputs.items():
        q = dict(quantizers(qmodel))[f"{name}.output_quant"]
        assert (float(q.lower.detach()), float(q.upper.detach())) == (float(out.min()), float(out.max())), name


# ------------------------------------------------------------------------------------------- runtimes

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install -e '.[onnx]'")


def _export(model, batch, folder, w_bits: int, scope: str = "deploy"):
    from bench.export.onnx_qdq import export_onnx
    qmodel = deploy(model, batch, w_bits=w_bits, scope=scope)
    export_onnx(qmodel, folder / f"{scope}-w{w_bits}.onnx", sample_size=16)
    return qmodel, folder / f"{scope}-w{w_bits}.onnx"


@pytest.fixture(scope="module", params=["deploy", "deploy-ort"])
def exported(model, batch, tmp_path_factory, request):
    """(fake-quant model, FP32 ONNX, ONNX export) of the small CNN, W8A8 MinMax, in each deploy scope."""
    from bench.export.onnx_qdq import export_onnx
    folder = tmp_path_factory.mktemp("deploy")
    export_onnx(model, folder / "fp32.onnx", sample_size=16)
    qmodel, path = _export(model, batch, folder, 8, request.param)
    return qmodel, folder / "fp32.onnx", path


def test_minmax_ranges_equal_onnxruntime_calibrator(model, batch, exported, tmp_path):
    from bench.export.peers import ort_calibrated_ranges
    qmodel, fp_path, _ = exported
    ranges = list(ort_calibrated_ranges(fp_path, batch, tmp_path).values())
    ours = [(q.lower.item(), q.upper.item()) for name, q in quantizers(qmodel) if not q.is_weight]
    assert len(ours) == 2 * CONVS
    for lower, upper in ours:   # every tensor we quantize is one onnxruntime calibrates: the same (min, max)
        assert any(abs(lower - lo) <= 1e-6 * max(1, abs(lo)) and abs(upper - hi) <= 1e-6 * max(1, abs(hi))
                   for lo, hi in ranges), (lower, upper)


def test_onnxruntime_fuses_every_conv_into_qlinearconv(exported, tmp_path):
    # deploy-ort: every conv. deploy: every conv but body2, whose output only the residual add reads and stays float
    # (no Q after it, so onnxruntime runs that conv in float; OpenVINO still runs it in int8, the next test).
    qmodel, _, path = exported
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    import onnx
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    floats = len(qmodel.adds_only_outputs)
    assert floats == (1 if qmodel.quant_scope == "deploy" else 0)
    assert ops["QLinearConv"] == CONVS - floats and ops["Conv"] + ops["FusedConv"] == floats


ONE_STEP = 1.0 + 1e-4   # one step of the output grid, with float32 rounding of the step itself


def _max_step_difference(runtime_out: np.ndarray, qmodel: nn.Module, x: torch.Tensor) -> float:
    """max |runtime - fake quant| in units of the last quantizer's step (the model output's grid)."""
    with torch.no_grad():
        reference = qmodel(x).numpy()
    step = float(qmodel.tail.output_quant.integer_params().scale)
    return float(np.abs(runtime_out - reference).max()) / step


def test_onnxruntime_reference_equals_fake_quant(exported, batch):
    # Without graph fusion onnxruntime runs the QDQ graph in float: the fake-quant model's values exactly, up to
    # float rounding at a tie. (Its fused integer kernels are the next test's subject.)
    qmodel, _, path = exported
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = batch[:1]
    assert _max_step_difference(session.run(None, {"lr": x.numpy()})[0], qmodel, x) <= ONE_STEP


@pytest.mark.parametrize("w_bits", [8, 7])
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_integer_runtime_output_within_one_step_of_fake_quant(model, batch, tmp_path, runtime, w_bits):
    # (the deploy scope; deploy-ort's OpenVINO output is not the fake quant's: test_openvino_does_not_round_...)
    from bench.export.cpu import has_int8_dot_product
    if w_bits == 8 and has_int8_dot_product() is not True:
        pytest.skip("this CPU has no VNNI/AMX: int8 kernels saturate u8 x s8 pairs with 8-bit weights (measured here: "
                    "31-33 output steps; bench/export/cpu.py); the 7-bit-weight case checks the runtimes")
    if runtime == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install -e '.[openvino]'")
        from bench.export.ov_model import OpenVINOSRModel as Runner
    else:
        from bench.export.ort_model import OnnxSRModel as Runner
    qmodel, path = _export(model, batch, tmp_path, w_bits)
    x = batch[:1]
    assert _max_step_difference(Runner(path, 1).run_numpy(x.numpy()), qmodel, x) <= ONE_STEP


def test_openvino_runs_every_conv_in_int8(exported):
    pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install -e '.[openvino]'")
    from bench.export.ov_model import OpenVINOSRModel, runtime_layer_precisions
    _, fp_path, path = exported
    convs = lambda p: {prec: n for (layer, prec), n in  # noqa: E731
                       runtime_layer_precisions(OpenVINOSRModel(p, 1).compiled((1, 3, 16, 16))).items()
                       if layer == "Convolution"}
    assert convs(path) == {"u8": CONVS}
    assert convs(fp_path) == {"f32": CONVS}


def test_learned_rounding_keeps_the_symmetric_grid_and_exports_its_codes(model, batch, tmp_path):
    # AdaRound swaps each weight quantizer for a learned-rounding one on the same grid: in the deploy scope that is
    # the symmetric grid (zero point 0), so the export keeps the learned codes exactly, as int8 with zero point 0.
    import onnx

    from bench.export.onnx_qdq import constant_values, export_onnx
    from bench.quant import weight_quantizers
    qmodel, _ = quantize_with_method(model, create_method("adaround", iters=20), 8, 8,
                                     CalibContext(fp_model=model, calib_batch=batch), scope="deploy")
    qmodel.eval()
    rounders = [q for _, q, _ in weight_quantizers(qmodel)]
    assert {q.quant_type for q in rounders} == {"learned-rounding"} and all(q.mode == "hard" for q in rounders)
    export_onnx(qmodel, tmp_path / "adaround.onnx", sample_size=16)
    graph = onnx.load(str(tmp_path / "adaround.onnx")).graph
    inits = constant_values(graph)
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
               and inits[n.input[0]].ndim == 4]
    assert len(weights) == CONVS
    for node in weights:
        assert inits[node.input[0]].dtype == np.int8 and not inits[node.input[2]].any()
    for (_, q, w), node in zip(weight_quantizers(qmodel), weights):   # the learned codes, not nearest rounding
        codes = inits[node.input[0]].astype(np.int32) + (q.levels + 1) // 2
        assert np.array_equal(codes, q.codes(w).numpy().astype(np.int32))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(tmp_path / "adaround.onnx"), options, providers=["CPUExecutionProvider"])
    x = batch[:1]
    assert _max_step_difference(session.run(None, {"lr": x.numpy()})[0], qmodel, x) <= ONE_STEP


# ------------------------------------------------------------------ one grid per tensor, and int32 biases that fit

def test_an_input_that_reads_a_quantized_output_shares_its_grid(model, batch, tmp_path):
    # head's output feeds body1 and branch directly, fuse's output feeds tail: one grid per tensor, as onnxruntime
    # and NNCF place it, so those three input quantizers are off. body2 reads LeakyReLU's new tensor and fuse the
    # concat's: they keep their own quantizers.
    import onnx

    from bench.export.onnx_qdq import export_onnx
    from bench.quant.surgery import set_quant_enabled
    qmodel = deploy(model, batch)
    assert qmodel.shared_input_quantizers == {"body1.input_quant": "head.output_quant",
                                              "branch.input_quant": "head.output_quant",
                                              "tail.input_quant": "fuse.output_quant"}
    set_quant_enabled(qmodel, False)
    set_quant_enabled(qmodel, True)          # back on: the shared ones stay off
    assert [n for n, q in quantizers(qmodel) if not q.enabled] == ["body1.input_quant", "body2.output_quant",
                                                                  "branch.input_quant", "tail.input_quant"]
    export_onnx(qmodel, tmp_path / "shared.onnx", sample_size=16)
    graph = onnx.load(str(tmp_path / "shared.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    double = [n.name for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in producer
              and producer[n.input[0]].op_type == "DequantizeLinear"]
    assert double == []                     # no Q -> DQ -> Q -> DQ for a runtime to merge


class InPlaceAfterHead(nn.Module):
    """An in-place ReLU between two convs: the second conv's input is a new value in the same storage."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.body = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.act(self.head(x)))


def test_an_input_after_an_in_place_op_keeps_its_own_grid(batch):
    torch.manual_seed(0)
    qmodel = quantize_model(InPlaceAfterHead().eval(), QuantConfig(8, 8, scope="deploy"))
    assert qmodel.shared_input_quantizers == {}


class DeadBranch(nn.Module):
    """head's ReLU is 0 everywhere on the calibration batch (bias -10), and body has a bias of 0.5: the
    contrast-attention case of IMDN x2 (bench/quant/integer_grid.py's docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 4, 1)
        self.act = nn.ReLU()
        self.body = nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.head.bias.fill_(-10.0)
            self.body.bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.act(self.head(x)))


def test_a_constant_tensor_gets_a_step_whose_int32_bias_fits(batch, tmp_path):
    # Without the floor the zero tensor's step was 3.9e-9 and 0.5 / (s_in * s_w) overflowed onnxruntime's int32
    # bias: its output was 0.0 where the fake quant gives 0.5 (and IMDN x2 MinMax W7A8 lost 0.84 dB on Set5).
    from bench.export.onnx_qdq import export_onnx
    from bench.export.ort_model import OnnxSRModel
    from bench.quant.integer_grid import MIN_ACT_STEP
    torch.manual_seed(0)
    qmodel = deploy(DeadBranch().eval(), batch, w_bits=7)
    step = float(qmodel.body.input_quant.integer_params().scale)
    assert step == MIN_ACT_STEP
    export_onnx(qmodel, tmp_path / "dead.onnx", sample_size=16)
    x = batch[:1]
    with torch.no_grad():
        reference = qmodel(x).numpy()
    out_step = float(qmodel.body.output_quant.integer_params().scale)
    assert np.allclose(reference, 0.5, atol=out_step)
    runtime = OnnxSRModel(tmp_path / "dead.onnx", 1).run_numpy(x.numpy())
    assert float(np.abs(runtime - reference).max()) <= ONE_STEP * out_step


class InPlaceActivation(nn.Module):
    """IMDN's pattern: a conv whose (deploy-scope quantized) output an in-place LeakyReLU overwrites."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.LeakyReLU(0.05, inplace=True)
        self.tail = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.act(self.head(x)))


def test_bound_fine_tuning_runs_through_an_in_place_activation(batch):
    # PTQ4SR's Pac trains the bounds with autograd: the output quantizer's result must be modifiable in place
    # (it raised "Output 0 of _FakeQuantizeSTE is a view and is being modified inplace" on IMDN).
    import copy
    torch.manual_seed(0)
    fp = InPlaceActivation().eval()
    qmodel, _ = quantize_with_method(fp, create_method("ptq4sr", iters=2, batch=2, patch=8), 7, 8,
                                     CalibContext(fp_model=fp, calib_batch=batch), scope="deploy")
    assert all(q.calibrated for n, q in quantizers(qmodel) if q.enabled)
    # The same bounds with a LeakyReLU that is not in place give the same values, with and without autograd.
    plain = copy.deepcopy(qmodel)
    plain.act = nn.LeakyReLU(0.05)
    with torch.no_grad():
        assert torch.equal(qmodel(batch), plain(batch))
    with torch.enable_grad():
        x = batch.clone().requires_grad_(True)
        y = batch.clone().requires_grad_(True)
        out_inplace, out_plain = qmodel(x), plain(y)
        out_inplace.sum().backward()
        out_plain.sum().backward()
    assert torch.equal(out_inplace.detach(), out_plain.detach()) and torch.equal(x.grad, y.grad)


# ------------------------------------------------------------------------ outputs that only residual adds read

def test_deploy_leaves_outputs_that_only_adds_read_float(model, batch, tmp_path):
    # body2's output goes only into `f + body2(...)`: the deploy scope switches its quantizer off for good; head's
    # output also feeds body1 and branch, so it stays quantized. deploy-ort quantizes both.
    import onnx

    from bench.export.onnx_qdq import export_onnx
    from bench.quant.surgery import set_quant_enabled
    qmodel = deploy(model, batch)
    assert qmodel.adds_only_outputs == ["body2.output_quant"]
    set_quant_enabled(qmodel, False)
    set_quant_enabled(qmodel, True)
    assert not qmodel.body2.output_quant.enabled and qmodel.head.output_quant.enabled
    export_onnx(qmodel, tmp_path / "deploy.onnx", sample_size=16)
    graph = onnx.load(str(tmp_path / "deploy.onnx")).graph
    consumers = {i: n.op_type for n in graph.node for i in n.input}
    conv_outputs = [consumers.get(n.output[0]) for n in graph.node if n.op_type == "Conv"]
    assert sorted(conv_outputs) == ["Add"] + ["QuantizeLinear"] * (CONVS - 1)
    assert deploy(model, batch, scope="deploy-ort").adds_only_outputs == []


def _residual_graph(path, channels: int = 16) -> tuple[dict, dict]:
    """x -> Q/DQ -> Conv (int8 weights) -> Q/DQ (scale 0.05) -> Add(Q/DQ(y)) -> Q/DQ (scale 0.07): the pattern of a
    conv output quantized before a residual add. Returns the inputs and the numpy references of its output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    shape = (1, channels, 12, 12)
    x, y = rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)
    w = rng.integers(-63, 64, (channels, channels, 3, 3)).astype(np.int8)
    ws = (rng.random(channels) * 0.002 + 0.001).astype(np.float32)
    b = (rng.random(channels) * 0.1).astype(np.float32)
    s_in, s1, s2 = 1 / 255, 0.05, 0.07
    const = {"w": w, "ws": ws, "wz": np.zeros(channels, np.int8), "b": b, "s_in": np.float32(s_in),
             "s1": np.float32(s1), "s2": np.float32(s2), "z": np.uint8(0), "z128": np.uint8(128)}
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["x", "s_in", "z"], ["xq"]), node("DequantizeLinear", ["xq", "s_in", "z"], ["xd"]),
             node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             node("Conv", ["xd", "wd", "b"], ["c"], pads=[1, 1, 1, 1]),
             node("QuantizeLinear", ["c", "s1", "z128"], ["cq"]), node("DequantizeLinear", ["cq", "s1", "z128"], ["cd"]),
             node("QuantizeLinear", ["y", "s_in", "z"], ["yq"]), node("DequantizeLinear", ["yq", "s_in", "z"], ["yd"]),
             node("Add", ["cd", "yd"], ["a"]),
             node("QuantizeLinear", ["a", "s2", "z128"], ["aq"]), node("DequantizeLinear", ["aq", "s2", "z128"], ["out"])]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)
                                                  for n in ("x", "y")],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in const.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))

    def q(v, s, zp, rounding=True):
        t = v / s + zp
        return (np.clip(np.round(t) if rounding else t, 0, 255) - zp) * s
    conv = torch.nn.functional.conv2d(torch.from_numpy(q(x, s_in, 0)),
                                      torch.from_numpy(w.astype(np.float32) * ws[:, None, None, None]),
                                      torch.from_numpy(b), padding=1).numpy()
    yd = q(y, s_in, 0)
    references = {"rounded": q(q(conv, s1, 128) + yd, s2, 128), "clamped": q(q(conv, s1, 128, False) + yd, s2, 128)}
    return {"x": x, "y": y}, {name: (ref, s2) for name, ref in references.items()}


def test_openvino_does_not_round_a_quantizer_between_a_conv_and_its_fused_sum(tmp_path):
    # Why the deploy scope leaves such outputs float: OpenVINO fuses Conv -> Q/DQ -> Add -> Q/DQ into one int8
    # convolution and applies the first quantizer as a clamp (its output equals the clamp-only reference exactly),
    # onnxruntime rounds as the QDQ graph says. A change in either runtime fails this test.
    pytest.importorskip("openvino", reason="the openvino extra is not installed: pip install -e '.[openvino]'")
    import openvino as ov
    path = tmp_path / "residual.onnx"
    feeds, references = _residual_graph(path)
    compiled = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", {"INFERENCE_NUM_THREADS": 1})
    outputs = {"openvino": compiled(feeds)[compiled.outputs[0]],
               "onnxruntime": ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]}
    differing = {(runtime, name): int((np.abs(out - ref) > step / 2).sum())
                 for runtime, out in outputs.items() for name, (ref, step) in references.items()}
    assert differing == {("openvino", "clamped"): 0, ("openvino", "rounded"): 420,
                         ("onnxruntime", "clamped"): 420, ("onnxruntime", "rounded"): 0}
    fused = [op.get_rt_info()["originalLayersNames"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Convolution"]
    assert len(fused) == 1 and {"c", "cq", "a"} <= set(fused[0].split(","))   # one node: conv, Q, add (and Q)
