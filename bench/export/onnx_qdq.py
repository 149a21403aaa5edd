"""ONNX export of a fake-quant model with QuantizeLinear/DequantizeLinear (QDQ) pairs from its calibrated bounds.

Every FakeQuantizer becomes a QDQ pair on the same tensor (activations, SwinIR's attention-matmul operands, weights),
so the graph computes what the fake-quant model computes, up to one difference of representation:

    fake quant (spec §2.3):  v_q = s * round((clip(v, l, u) - l) / s) + l          grid l + k*s, k = 0..N
    ONNX QDQ:                v_q = s * (clip(round(v / s) + z, 0, N) - z)           grid (k - z)*s, z an integer

The bounds are real-valued, ONNX zero points are integers: z = round(-l / s), which moves the grid by less than
half a step (|l + z*s| <= s/2). A range that does not contain 0 (l > 0 or u < 0) cannot be written with an
in-range zero point; it is widened to [0, u] (or [l, 0]) with the step of that wider range. `integer_bounds` gives
the bounds the ONNX graph effectively uses, so the cost of the rounding can be measured in PyTorch as well
(`with_integer_bounds`).

Weights are rounded once, from their FP values to the integer grid (the fake-quant weights themselves are on the
other grid), and stored as integer initializers followed by DequantizeLinear: uint8 by default, 8 bits per weight
whatever their bit-width (a b-bit weight is clipped to its grid's range, so it keeps at most 2^b codes); with
`opset >= 21` (INT4_OPSET), weights of at most 4 bits are stored as UINT4 instead (the same codes and zero points,
two per byte). Activations are quantized to uint8, so the export needs 8-bit activations (`ConfigError`
otherwise). The FP32 model exports with the same function (no quantizers), for latency comparisons in one runtime.

How the UINT4 weights are found: the TorchScript exporter writes at most opset 20 and knows no 4-bit type, so those
weights are traced as *int8* QDQ pairs with zero point z - 8 (their codes then lie in -8..7; every other QDQ
pair is uint8), the graph is converted to the asked opset, and each int8 weight initializer becomes the UINT4
tensor of codes q + 8 with zero point z: the same integers as the uint8 export, so the same dequantized weights.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.quantizer import _MIN_STEP, FakeQuantizer, levels
from bench.quant.surgery import quantizers

OPSET = 17
INT4_OPSET = 21        # QuantizeLinear/DequantizeLinear take INT4/UINT4 from opset 21 on
TORCH_MAX_OPSET = 20   # the TorchScript exporter's newest opset; newer ones come from onnx.version_converter
MIN_OPSET = 13         # per-channel QuantizeLinear/DequantizeLinear
INT4_MAX_BITS = 4
INT4_MARK = 8          # <= 4-bit weights are traced as int8 QDQ with zero point z - INT4_MARK (see the docstring)
ONNX_ACT_BITS = 8
EXPORTABLE_TYPES = ("uniform", "int-symmetric", "int-zero-point")   # the QDQ-expressible grids
# A learned-rounding weight keeps its learned codes only on a grid whose zero point is an integer already (the deploy
# scope's: AdaRound/BRECQ/QDrop there start from its symmetric grid); its dequantized weight is then exported.
LEARNED_ROUNDING = "learned-rounding"
_INTEGER_ZERO_POINT_TOLERANCE = 1e-3
UINT8_MAX = 255
INPUT_NAME, OUTPUT_NAME = "lr", "sr"


# ------------------------------------------------------------------------------------------ integer grids

@dataclass(frozen=True)
class IntegerGrid:
    """ONNX quantization parameters of one quantizer: float32 scale, integer zero point (per tensor or channel).

    Codes and zero points are kept in the unsigned space 0..levels; `int8` grids (the deploy scope's symmetric
    weights) are written as int8 with everything shifted by -2^(b-1), which makes their zero point 0 (a b-bit
    symmetric weight then uses the int8 codes -(2^(b-1) - 1)..2^(b-1) - 1)."""
    scale: torch.Tensor
    zero_point: torch.Tensor      # int32, in 0..levels
    levels: int                   # N = 2^b - 1 of the fake quantizer (the codes of a b-bit weight)
    axis: int | None
    widened: int                  # channels whose range did not contain 0 (widened to include it)
    qmin: int = 0                 # the codes the grid uses (narrow-range symmetric weights: 1..N)
    int8: bool = False            # written as int8 (zero point z - 2^(b-1)) instead of uint8

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(l', u') of the grid the ONNX graph uses: l' = (qmin - z)*s, u' = (N - z)*s."""
        zero = self.zero_point.to(torch.float32)
        return (self.qmin - zero) * self.scale, (self.levels - zero) * self.scale


def integer_grid(quantizer: FakeQuantizer) -> IntegerGrid:
    """z = round(-l/s) with the fake quantizer's step; ranges without 0 are widened to include it. A quantizer type
    that computes on an integer grid itself (`integer_params()`, bench/quant/integer_grid.py) gives it exactly."""
    n = levels(quantizer.bits)
    own = getattr(quantizer, "integer_params", None)
    if own is not None:
        params = own()
        offset = 2 ** (quantizer.bits - 1) if params.signed else 0
        return IntegerGrid(params.scale, params.zero_point + offset, n, quantizer.per_channel_axis, 0,
                           qmin=params.qmin + offset, int8=params.signed)
    lower, upper = quantizer.lower.detach().float(), quantizer.upper.detach().float()
    positive, negative = lower > 0, upper < 0
    lower = torch.where(positive, torch.zeros_like(lower), lower)
    upper = torch.where(negative, torch.zeros_like(upper), upper)
    scale = torch.clamp((upper - lower) / n, min=_MIN_STEP)
    zero_point = torch.clamp(torch.round(-lower / scale), 0, n).to(torch.int32)
    return IntegerGrid(scale, zero_point, n, quantizer.per_channel_axis, int((positive | negative).sum()))


@torch.no_grad()
def with_integer_bounds(qmodel: nn.Module) -> nn.Module:
    """A copy of `qmodel` whose quantizers use the bounds of their ONNX integer grids (the rounding's cost)."""
    model = copy.deepcopy(qmodel)
    for _, q in quantizers(model):
        if q.calibrated:
            lower, upper = integer_grid(q).bounds()
            q.lower.copy_(lower)
            q.upper.copy_(upper)
    return model


# ------------------------------------------------------------------------------------------ torch side

class _QDQ(nn.Module):
    """torch.fake_quantize_*_affine, which the TorchScript exporter writes as QuantizeLinear + DequantizeLinear.

    `mark` shifts the zero point and the integer range by -INT4_MARK (uint8 -> int8): the same output, an int8
    graph node that the ONNX side turns into a UINT4 weight."""

    def __init__(self, grid: IntegerGrid, mark: bool = False) -> None:
        super().__init__()
        self.axis = grid.axis
        # int8 grids (signed, zero point 0): the unsigned-space zero point is 2^(b-1) for every b <= 8
        offset = INT4_MARK if mark else ((grid.levels + 1) // 2 if grid.int8 else 0)
        self.low, self.high = (-128, 127) if mark or grid.int8 else (0, UINT8_MAX)
        self.register_buffer("scale", grid.scale.clone())
        self.register_buffer("zero_point", grid.zero_point.clone() - offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.low, self.high)
        return torch.fake_quantize_per_channel_affine(x, self.scale, self.zero_point, self.axis, self.low, self.high)


@dataclass
class ExportReport:
    """What an export wrote: counts of QDQ nodes by role and the zero-point facts."""
    path: str
    nodes: dict[str, int] = field(default_factory=dict)
    weight_qdq: int = 0
    activation_qdq: int = 0
    widened: list[str] = field(default_factory=list)   # quantizers whose range was widened to contain 0
    max_grid_shift_steps: float = 0.0                    # max |l + z*s| / s over the quantizers (<= 0.5)
    opset: int = OPSET
    uint4_weights: int = 0                               # weight initializers stored as UINT4 (opset >= 21)

    def to_dict(self) -> dict:
        return {"path": self.path, "nodes": self.nodes, "weight_qdq": self.weight_qdq,
                "activation_qdq": self.activation_qdq, "widened": self.widened,
                "max_grid_shift_steps": self.max_grid_shift_steps, "opset": self.opset,
                "uint4_weights": self.uint4_weights}


def _check_exportable(qmodel: nn.Module) -> None:
    transformed = [path for path, m in qmodel.named_modules() if getattr(m, "weight_transform", None) is not None]
    if transformed:  # the QDQ graph has no node for T^-1 around a weight's DequantizeLinear
        raise ConfigError(f"layer {transformed[0]} quantizes its weight through a weight transform, which the ONNX "
                          f"QDQ export cannot express: export with --format packed")
    for name, q in quantizers(qmodel):
        if q.enabled and not q.calibrated:
            raise ConfigError(f"quantizer {name} is not calibrated: calibrate the model with a method before exporting")
        if q.enabled and not q.is_weight and q.bits != ONNX_ACT_BITS:
            raise ConfigError(f"quantizer {name} has {q.bits}-bit activations; the ONNX export writes uint8 "
                              f"activations: quantize with --a-bits 8 (weights may have fewer bits)")
        # QDQ nodes are uniform grids with round-to-nearest; a learned-rounding weight's codes sit on the
        # fake-quant grid, which the rounded zero point moves, so its learned choices cannot be kept either.
        if q.enabled and q.quant_type == LEARNED_ROUNDING and _integer_zero_point(q):
            continue
        if q.enabled and q.quant_type not in EXPORTABLE_TYPES:
            raise ConfigError(f"quantizer {name} is a {q.quant_type} quantizer, which ONNX QuantizeLinear/"
                              f"DequantizeLinear cannot express: export with --format packed, or use a uniform method")


def _integer_zero_point(q: FakeQuantizer) -> bool:
    """True when -l/s is an integer (to float precision) in every channel: the grid needs no rounding to export."""
    lower, upper = q.lower.detach().double(), q.upper.detach().double()
    position = -lower / ((upper - lower) / q.levels)
    return bool(((position - position.round()).abs() < _INTEGER_ZERO_POINT_TOLERANCE).all())


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


@torch.no_grad()
def onnx_ready_copy(qmodel: nn.Module, report: ExportReport, uint4_weights: bool = False) -> nn.Module:
    """A copy with every enabled FakeQuantizer replaced by a QDQ module; b-bit weights pre-rounded to their grid.
    With `uint4_weights`, weights of at most 4 bits get int8-marked QDQ modules (to become UINT4 in ONNX)."""
    _check_exportable(qmodel)
    model = copy.deepcopy(qmodel).cpu().eval()
    owners = {f"{path}.weight_quant": m for path, m in model.named_modules()
              if isinstance(getattr(m, "weight_quant", None), FakeQuantizer)}
    for name, q in quantizers(model):
        if not q.enabled:
            _replace(model, name, nn.Identity())
            continue
        grid = integer_grid(q)
        if q.is_weight and q.quant_type == LEARNED_ROUNDING:
            # The learned codes, exactly: the dequantized weight lies on the grid, which the QDQ maps back to them.
            owner = owners[name]
            owner.weight.data = q(owner.weight.detach()).detach()
            if bool((grid.zero_point == (grid.levels + 1) // 2).all()):  # symmetric: int8 with zero point 0
                grid = dataclasses.replace(grid, int8=True)
            report.weight_qdq += 1
        elif q.is_weight:
            owner = owners[name]
            # Clipped to the integer grid's range, not rounded: rounding to the fake-quant grid first and then
            # to the shifted ONNX grid would move every weight of a channel by the same shift (a coherent error,
            # 0.6 dB on IMDN x2 W8A8); the QDQ rounds the FP weight once, to at most N codes.
            lower, upper = grid.bounds()
            owner.weight.data = torch.minimum(torch.maximum(owner.weight.detach(), q._broadcast(lower, owner.weight)),
                                              q._broadcast(upper, owner.weight))
            report.weight_qdq += 1
        else:
            report.activation_qdq += 1
        if grid.widened:
            report.widened.append(name)
        lower = q.effective_bounds()[0] if hasattr(q, "effective_bounds") else q.lower.detach()
        shift = ((lower - grid.bounds()[0]).abs() / grid.scale)[lower <= 0]
        if shift.numel():
            report.max_grid_shift_steps = max(report.max_grid_shift_steps, float(shift.max()))
        _replace(model, name, _QDQ(grid, mark=uint4_weights and q.is_weight and q.bits <= INT4_MAX_BITS))
    return model


def _metadata(model: nn.Module, extra: dict | None) -> dict[str, str]:
    meta = {"pad_multiple": str(int(getattr(model, "pad_multiple", 1) or 1)),
            "pad_mode": str(getattr(model, "pad_mode", "flip_concat"))}
    for key, value in (extra or {}).items():
        meta[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    return meta


def _torch_export(model: nn.Module, path: Path, sample_size: int, opset: int) -> None:
    x = torch.rand(1, 3, sample_size, sample_size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        # The TorchScript exporter: it writes fake_quantize_* as QDQ pairs and keeps H, W dynamic for SwinIR.
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {2: "h", 3: "w"}, OUTPUT_NAME: {2: "H", 3: "W"}})


# ------------------------------------------------------------------------------------------ onnx side

def constant_values(graph) -> dict[str, np.ndarray]:
    """Every tensor of the graph with a constant value: initializers, Constant nodes, and Identity nodes of those
    (the exporter writes one initializer per distinct value and Identity nodes for its repeats: SwinIR's
    per-tensor zero points)."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:  # in topological order, so an Identity's input is known before it
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        elif n.op_type == "Identity" and n.input[0] in values:
            values[n.output[0]] = values[n.input[0]]
    return values


def _fold_weight_quantize(graph) -> int:
    """QuantizeLinear(float initializer) -> the integer initializer it computes (so weights are stored as uint8)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    # Scales and zero points may be initializers, Constant nodes or Identity nodes of those.
    constants = constant_values(graph)
    consumers = Counter(i for n in graph.node for i in n.input)
    folded = []
    for node in graph.node:
        if (node.op_type != "QuantizeLinear" or node.input[0] not in inits or consumers[node.input[0]] != 1
                or node.input[1] not in constants or node.input[2] not in constants):
            continue
        w = constants[node.input[0]].astype(np.float32)
        scale = constants[node.input[1]].astype(np.float32)
        zero_point = constants[node.input[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim:  # per channel: broadcast along `axis`
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zero_point.astype(np.int32).reshape(shape)
        else:
            zp = zero_point.astype(np.int32)
        info = np.iinfo(zero_point.dtype)  # uint8, or int8 for the weights marked to become UINT4
        q = np.clip(np.rint(w / scale) + zp, info.min, info.max).astype(zero_point.dtype)  # rint: half to even
        graph.initializer.remove(inits[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    _drop_unused(graph)
    return len(folded)


def _int8_weights_to_uint4(graph) -> int:
    """Each int8 weight initializer feeding a DequantizeLinear (the marked <= 4-bit weights) -> UINT4 codes q + 8,
    its zero point -> UINT4 z + 8: the same (q - z) * s, two codes per byte."""
    import ml_dtypes
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    constants = constant_values(graph)
    consumers = Counter(i for n in graph.node for i in n.input)
    converted = 0
    for node in graph.node:
        weight = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if weight is None or weight.data_type != TensorProto.INT8:
            continue
        zp_name = node.input[2]
        zp = constants[zp_name]
        codes = numpy_helper.to_array(weight).astype(np.int16) + INT4_MARK
        zp = zp.astype(np.int16) + INT4_MARK
        if codes.min() < 0 or codes.max() > 15 or zp.min() < 0 or zp.max() > 15:
            if not zp.any():  # a signed weight with zero point 0 (the deploy scope's 8-bit grid) stays int8
                continue
            raise ConfigError(f"weight {weight.name} does not fit UINT4 (codes {codes.min()}..{codes.max()}); "
                              f"export it with --opset {OPSET}")
        graph.initializer.remove(weight)
        graph.initializer.append(numpy_helper.from_array(codes.astype(ml_dtypes.uint4), weight.name))
        if zp_name in inits and consumers[zp_name] == 1:  # this node's own zero point: replaced under its name
            graph.initializer.remove(inits.pop(zp_name))
        else:
            node.input[2] = f"{weight.name}.zero_point_uint4"
        graph.initializer.append(numpy_helper.from_array(zp.astype(ml_dtypes.uint4), node.input[2]))
        converted += 1
    _drop_unused(graph)
    return converted


def _drop_unused(graph) -> None:
    """Constant/Identity nodes and initializers that nothing reads any more (a folded QuantizeLinear's float
    weight, zero points replaced by UINT4 ones)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("Constant", "Identity") and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)


def _finish(path: Path, metadata: dict[str, str], fold: bool, opset: int = OPSET) -> tuple[dict[str, int], int]:
    """Fold the weights' QuantizeLinear, convert to `opset` if the exporter could not write it, store the marked
    weights as UINT4; returns (node counts, UINT4 weights)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(path))
    if fold:
        _fold_weight_quantize(model.graph)
    if opset > TORCH_MAX_OPSET:
        model = version_converter.convert_version(model, opset)
        del model.graph.value_info[:]  # the converter's inferred shapes: optional, and 4 KB on FSRCNN alone
    uint4 = _int8_weights_to_uint4(model.graph) if fold and opset >= INT4_OPSET else 0
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return dict(Counter(n.op_type for n in model.graph.node)), uint4


def export_onnx(model: nn.Module, path: str | Path, *, sample_size: int = 32, opset: int = OPSET,
                metadata: dict | None = None) -> ExportReport:
    """Write `model` (a calibrated fake-quant model, or an FP one) as ONNX with dynamic H, W.

    `sample_size`: side of the tracing input (a multiple of the model's pad_multiple: callers pad inputs).
    `opset`: 13 to the installed onnx's newest; from 21 on, weights of at most 4 bits are stored as UINT4.
    """
    import onnx

    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ConfigError(f"ONNX opset {opset} is not supported: use {MIN_OPSET}..{onnx.defs.onnx_opset_version()} "
                          f"(default {OPSET}; {INT4_OPSET} or newer stores weights of at most 4 bits as UINT4)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report = ExportReport(path=str(path), opset=opset)
    quantized = bool(quantizers(model))
    uint4 = quantized and opset >= INT4_OPSET and any(q.enabled and q.is_weight and q.bits <= INT4_MAX_BITS
                                                      for _, q in quantizers(model))
    ready = onnx_ready_copy(model, report, uint4) if quantized else copy.deepcopy(model).cpu().eval()
    multiple = int(getattr(model, "pad_multiple", 1) or 1)
    sample_size = -(-sample_size // multiple) * multiple
    _torch_export(ready, path, sample_size, min(opset, TORCH_MAX_OPSET))
    kind = ("qdq-uint8, uint4 weights" if uint4 else "qdq-uint8") if quantized else "fp32"
    meta = {"quantization": kind, "zero_point": "rounded", **(metadata or {})}
    report.nodes, report.uint4_weights = _finish(path, _metadata(model, meta), fold=quantized, opset=opset)
    return report
