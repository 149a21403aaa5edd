"""One grid per tensor: input quantizers that would quantize an already quantized tensor a second time.

A scope that quantizes layer outputs (`Scope.quantize_outputs`, the `deploy` scope) puts a quantizer on a conv's
output *and* on the next layer's input. Where the next layer reads that output directly (or a view of it: a split,
a slice, a reshape), the tensor would pass two quantizers with two different grids, Q1 -> DQ1 -> Q2 -> DQ2 in the
exported graph. Integer runtimes keep one grid per tensor and merge such pairs (onnxruntime's
DoubleQDQPairsRemover, graph optimisation level BASIC and above, rewrites them into one pair with recomputed
parameters), so with two different grids the runtime no longer computes what the fake quant computes. Measured
effect: none on IMDN (its one such pair, `fea_conv` output -> `IMDB1.c1` input, gets identical grids from the range
rules, and the Set5 numbers did not move); on IMDTN x4 MinMax W7A8 the fake quant moved from 31.89 to 31.87 dB on
Set5 (13 attention k/v operands now on the qkv output's grid) and OpenVINO/onnxruntime stay within 0.02 dB of it.
(IMDN x2's 0.84 dB onnxruntime gap was another bug: bench.quant.integer_grid's MIN_ACT_STEP.)

NNCF and onnxruntime's own quantizer place one quantizer per tensor. So does this module: it traces one small
forward pass, and each input quantizer whose tensor is (a view of) a quantized output that nothing has modified
since is switched off and marked `shares_grid_of = <the output quantizer's path>`. The fake-quant model then
computes what the runtime computes, and the exported graph holds one Q/DQ pair for that tensor. An input
quantizer with other bits than the output's keeps its own grid (mixed precision: the runtime requantizes).

Outputs read by residual adds only (`outputs_into_adds`): a conv whose output goes only into an Add, whose sum
is then quantized (IMDN's LR_conv + fea_conv, each IMDB's c5 + its input), is one OpenVINO node: the int8
convolution with the Add as a sum post-op and the two FakeQuantize as its other post-ops. OpenVINO applies the
first FakeQuantize there *without rounding* (a clamp to its range): measured on a one-conv graph, its output
equals the clamp-only reference exactly and differs from the rounding reference in 420 of 2,304 codes, where
onnxruntime rounds (QLinearConv then QLinearAdd). So the two runtimes compute different things for that
quantizer, and IMDN x2 MinMax W7A8 ran 0.086 dB above the fake quant in OpenVINO. The deploy scope therefore
leaves such an output unquantized (switched off, `feeds_adds_only`): the conv's int8 result is added in float
and the sum requantized, which both runtimes compute (onnxruntime runs that conv in float: no Q after it).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.quant.quantizer import FakeQuantizer

SHARED_ATTR = "shares_grid_of"
ADDS_ONLY_ATTR = "feeds_adds_only"
# Torch functions that add two tensors (out of place or in place): a residual add
ADD_FUNCTIONS = frozenset({"add", "add_", "__add__", "__radd__", "__iadd__"})


def trace_input(model: nn.Module, side: int = 16) -> torch.Tensor:
    """A small input the model accepts: the first conv's input channels, a side that is a multiple of the
    model's `pad_multiple` (window-based transformers)."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    multiple = int(getattr(model, "pad_multiple", 1) or 1)
    side = -(-side // multiple) * multiple
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.rand(1, channels, side, side, generator=torch.Generator().manual_seed(0)).to(device)


def _storage_key(x: torch.Tensor) -> int:
    return x.untyped_storage().data_ptr()


@torch.no_grad()
def share_requantized_inputs(qmodel: nn.Module, output_quantizers: dict[str, FakeQuantizer],
                             sample: torch.Tensor | None = None) -> dict[str, str]:
    """Switch off every input quantizer of `qmodel` that reads (a view of) the unmodified output of one of
    `output_quantizers` ({path: quantizer}) with the same bits; returns {input quantizer path: output path}.

    One forward of `sample` (default `trace_input`) with every quantizer passing its input through (an observer).
    A recorded output stays referenced until the trace ends, so its memory cannot be reused by another tensor;
    the tensor's version counter (shared by its views) rules out an in-place op since (an in-place LeakyReLU)."""
    produced: dict[int, tuple[int, str, torch.Tensor]] = {}
    shared: dict[str, str] = {}
    by_id = {id(q): name for name, q in output_quantizers.items()}
    every = [(name, m) for name, m in qmodel.named_modules() if isinstance(m, FakeQuantizer)]

    def observer_for(name: str, q: FakeQuantizer):
        def observe(x: torch.Tensor) -> None:
            if q.is_weight or not isinstance(x, torch.Tensor):
                return
            key = _storage_key(x)
            if id(q) in by_id:
                produced[key] = (x._version, name, x)
            elif key in produced and produced[key][0] == x._version:
                source = output_quantizers[produced[key][1]]
                if source.bits == q.bits and name not in shared:
                    shared[name] = produced[key][1]
        return observe

    saved = {id(q): q.observer for _, q in every}
    for name, q in every:
        q.observer = observer_for(name, q)
    was_training = qmodel.training
    qmodel.eval()
    try:
        qmodel(trace_input(qmodel) if sample is None else sample)
    finally:
        for _, q in every:
            q.observer = saved[id(q)]
        qmodel.train(was_training)
    modules = dict(every)
    for name, source in shared.items():
        modules[name].enabled = False
        setattr(modules[name], SHARED_ATTR, source)
    return shared


def is_shared(q: FakeQuantizer) -> bool:
    """Whether `q` is an input quantizer switched off because its tensor is already on another quantizer's grid."""
    return getattr(q, SHARED_ATTR, None) is not None


def placed_off(q: FakeQuantizer) -> bool:
    """Whether the placement switched `q` off for good: its tensor shares another grid, or only adds read it."""
    return is_shared(q) or bool(getattr(q, ADDS_ONLY_ATTR, False))


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


class _Consumers(torch.overrides.TorchFunctionMode):
    """Records, for each tracked tensor (by storage and version), the names of the torch functions that read it
    and return a tensor (metadata reads such as `.shape` or `._version` return none and are not consumers)."""

    def __init__(self) -> None:
        super().__init__()
        self.tracked: dict[int, tuple[int, str]] = {}   # storage -> (version, output quantizer path)
        self.readers: dict[str, set[str]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if _tensors(result):
            name = getattr(func, "__name__", str(func))
            for x in _tensors(args) + _tensors(kwargs or {}):
                entry = self.tracked.get(_storage_key(x))
                if entry is not None and entry[0] == x._version:
                    self.readers.setdefault(entry[1], set()).add(name)
        return result


@torch.no_grad()
def outputs_into_adds(qmodel: nn.Module, output_quantizers: dict[str, FakeQuantizer],
                      sample: torch.Tensor | None = None) -> list[str]:
    """Switch off every output quantizer of `output_quantizers` whose tensor only residual adds read (no layer,
    no quantizer, no view); returns their paths. One traced forward, as `share_requantized_inputs`."""
    mode = _Consumers()
    every = [(name, m) for name, m in qmodel.named_modules() if isinstance(m, FakeQuantizer)]
    by_id = {id(q): name for name, q in output_quantizers.items()}

    def observer_for(q: FakeQuantizer):
        def observe(x: torch.Tensor) -> None:
            if q.is_weight or not isinstance(x, torch.Tensor):
                return
            entry = mode.tracked.get(_storage_key(x))
            if entry is not None and entry[0] == x._version:
                mode.readers.setdefault(entry[1], set()).add("quantizer")
            if id(q) in by_id:
                mode.tracked[_storage_key(x)] = (x._version, by_id[id(q)])
                keep.append(x)  # referenced until the trace ends: its storage cannot be reused
        return observe

    keep: list[torch.Tensor] = []
    saved = {id(q): q.observer for _, q in every}
    for _, q in every:
        q.observer = observer_for(q)
    was_training = qmodel.training
    qmodel.eval()
    try:
        with mode:
            qmodel(trace_input(qmodel) if sample is None else sample)
    finally:
        for _, q in every:
            q.observer = saved[id(q)]
        qmodel.train(was_training)
    adds_only = [name for name in output_quantizers if mode.readers.get(name) and mode.readers[name] <= ADD_FUNCTIONS]
    for name in adds_only:
        output_quantizers[name].enabled = False
        setattr(output_quantizers[name], ADDS_ONLY_ATTR, True)
    return adds_only
