"""Base class of PTQ methods, and the helper that turns a per-tensor range rule into a method.

A method is a `PTQMethod` subclass registered with `@register_method("name")`:

    @register_method("absmax")
    class AbsMax(RangeRuleMethod):
        '''Symmetric bounds -max|v|, max|v|.'''

        def range(self, x, quantizer):
            m = float(x.abs().max())
            return -m, m

Hyper-parameters are a nested dataclass `Params` (defaults = the recorded defaults); `Method(**params)`
validates them (unknown name or wrong type -> ConfigError listing the valid ones) and `describe()`
returns {"name", "params"} for result records.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from tqdm import tqdm

from bench.errors import ConfigError
from bench.quant.calibrate import capture_activations
from bench.quant.pipeline import CalibContext
from bench.quant.quantizer import FakeQuantizer
from bench.quant.surgery import quantizers, weight_quantizers

_UnionType = types.UnionType  # `int | None` (typing.Union covers Optional[int])
Bound = float | torch.Tensor
# rule(x, quantizer) -> (lower, upper) for one tensor (the quantizer tells bits and kind).
RangeRule = Callable[[torch.Tensor, FakeQuantizer], tuple[Bound, Bound]]
# channel_rule(weight, quantizer) -> (lower (C,), upper (C,)) of all output channels at once, or None to fall back
# to the range rule channel by channel (it must give the same bounds: it exists only to be faster).
ChannelRule = Callable[[torch.Tensor, FakeQuantizer], "tuple[torch.Tensor, torch.Tensor] | None"]


# ------------------------------------------------------------------------------------------------ params

@dataclass(frozen=True)
class ParamField:
    name: str
    type: Any
    default: Any
    help: str = ""

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "|".join(str(v) for v in typing.get_args(tp))
    if origin in (typing.Union, _UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _type_hints(params_cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(params_cls)
    except Exception:  # a plugin's annotation that cannot be resolved: fall back to no type checking
        return {f.name: Any for f in dataclasses.fields(params_cls)}


def param_fields(params_cls: type) -> list[ParamField]:
    hints = _type_hints(params_cls)
    fields = []
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        fields.append(ParamField(f.name, hints.get(f.name, Any), default, f.metadata.get("help", "")))
    return fields


def _accepts(tp: Any, value: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, _UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # containers and other generics: left to the method's own validation


def _convert(tp: Any, text: str) -> Any:
    """Parse a command-line string to the field type (bool: true/false/1/0/yes/no; none: None)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        for choice in typing.get_args(tp):
            if str(choice) == text:
                return choice
        raise ValueError(f"expected one of {', '.join(map(str, typing.get_args(tp)))}")
    if origin in (typing.Union, _UnionType):
        args = typing.get_args(tp)
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, text)
            except ValueError:
                continue
        raise ValueError(f"cannot parse {text!r}")
    if tp is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp is str or tp is Any:
        return text
    raise ValueError(f"parameters of type {tp} cannot be given on the command line")


# ------------------------------------------------------------------------------------------------ method

class PTQMethod:
    """Base class: subclasses set a nested `Params` dataclass and implement `calibrate`."""

    name: ClassVar[str] = ""

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, **params: Any) -> None:
        self.params = self.make_params(params)

    # -------------------------------------------------------------------------------- params handling
    @classmethod
    def param_fields(cls) -> list[ParamField]:
        return param_fields(cls.Params)

    @classmethod
    def make_params(cls, params: dict[str, Any]):
        fields = {f.name: f for f in cls.param_fields()}
        unknown = sorted(set(params) - set(fields))
        label = cls.name or cls.__name__
        if unknown:
            valid = ", ".join(fields) or "none"
            raise ConfigError(f"method {label!r} has no parameter {unknown[0]!r}; valid parameters: {valid}")
        for key, value in params.items():
            if not _accepts(fields[key].type, value):
                raise ConfigError(f"method {label!r}: parameter {key}={value!r} must be {fields[key].type_name}")
            if isinstance(value, int) and not isinstance(value, bool) and fields[key].type is float:
                params = {**params, key: float(value)}
        try:
            return cls.Params(**params)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"method {label!r}: {exc}") from exc

    @classmethod
    def parse_params(cls, items: list[str]) -> dict[str, Any]:
        """`["key=value", ...]` from the command line, parsed to the Params field types."""
        fields = {f.name: f for f in cls.param_fields()}
        label = cls.name or cls.__name__
        parsed: dict[str, Any] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep:
                raise ConfigError(f"method parameter {item!r} must be key=value (e.g. p=1e-4)")
            if key not in fields:
                valid = ", ".join(fields) or "none"
                raise ConfigError(f"method {label!r} has no parameter {key!r}; valid parameters: {valid}")
            try:
                parsed[key] = _convert(fields[key].type, text.strip())
            except ValueError as exc:
                raise ConfigError(f"method {label!r}: bad value {item!r}: {exc}") from exc
        return parsed

    @classmethod
    def summary(cls) -> str:
        """First line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    # ------------------------------------------------------------------------------------- the method
    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        """Set `lower`/`upper` of every quantizer of `qmodel` (marking them calibrated); may fine-tune them."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "params": dataclasses.asdict(self.params)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.params).items())
        return f"{type(self).__name__}({args})"


# -------------------------------------------------------------------------------------- range rules

def _apply(name: str, q: FakeQuantizer, bounds: tuple[Bound, Bound]) -> None:
    try:
        q.set_bounds(*bounds)
    except ValueError as exc:
        raise ConfigError(f"the range rule gave invalid bounds for quantizer {name}: {exc}") from exc


def _weight_bounds(weight: torch.Tensor, q: FakeQuantizer, rule: RangeRule,
                   channel_rule: ChannelRule | None = None) -> tuple[Bound, Bound]:
    if not q.per_channel:
        return rule(weight, q)
    if channel_rule is not None:
        bounds = channel_rule(weight, q)
        if bounds is not None:
            return bounds
    # Per-channel: the same per-tensor rule on each output channel's slice.
    pairs = [rule(w_c, q) for w_c in weight.unbind(q.per_channel_axis)]
    lower = torch.tensor([float(lo) for lo, _ in pairs], dtype=torch.float64)
    upper = torch.tensor([float(hi) for _, hi in pairs], dtype=torch.float64)
    return lower, upper


def _no_progress() -> None:
    return None


def set_weight_bounds(qmodel: nn.Module, rule: RangeRule, on_done: Callable[[], None] = _no_progress,
                      channel_rule: ChannelRule | None = None) -> None:
    """Apply `rule` to the FP weight of every weight quantizer (per output channel when per-channel; all channels
    at once through `channel_rule` when given)."""
    for name, q, weight in weight_quantizers(qmodel):
        with torch.no_grad():
            _apply(name, q, _weight_bounds(weight.detach(), q, rule, channel_rule))
        on_done()


def set_activation_bounds(qmodel: nn.Module, batch: torch.Tensor, rule: RangeRule,
                          on_done: Callable[[], None] = _no_progress, workers: int = 0) -> None:
    """Apply `rule` to each activation quantizer's input captured on `batch` (one FP forward, spec §3.1);
    workers > 0 runs a thread-safe rule on that many threads beside the forward (same bounds)."""
    def observe(name: str, q: FakeQuantizer, x: torch.Tensor) -> None:
        _apply(name, q, rule(x, q))
        on_done()

    capture_activations(qmodel, batch, observe, workers=workers)


def set_bounds_from_rule(qmodel: nn.Module, ctx: CalibContext, rule: RangeRule,
                         weight_rule: RangeRule | None = None, *, desc: str = "range rule",
                         channel_rule: ChannelRule | None = None, workers: int = 0) -> None:
    """Every quantizer's bounds from a per-tensor rule: weights from their tensor (`weight_rule`, default
    `rule`; `channel_rule` for all channels of a per-channel weight at once), activations from their input on
    `ctx.calib_batch` (on `workers` threads beside the forward when > 0). A progress bar when `ctx.progress`."""
    batch = ctx.require_batch()
    with tqdm(total=len(quantizers(qmodel)), desc=desc, unit="quantizer", disable=not ctx.progress,
              leave=False) as bar:
        set_weight_bounds(qmodel, weight_rule or rule, lambda: bar.update(1), channel_rule)
        set_activation_bounds(qmodel, batch, rule, lambda: bar.update(1), workers)


def capture_workers() -> int:
    """Worker threads for a thread-safe range rule: half of this process's torch threads; the capture forward
    keeps the other half (on 2 cores, DOBI on the speed benchmark's batch: one sorting worker beside a 1-thread
    forward 19.0-20.5 s, two sorting workers beside a 2-thread forward 21.6-22.4 s)."""
    return torch.get_num_threads() // 2


class RangeRuleMethod(PTQMethod):
    """A method defined by a per-tensor range rule: implement `range(x, quantizer) -> (l, u)` (and
    optionally `weight_range`, default = `range`).

    `thread_safe_range = True` declares that `range` may run on several threads at once (no shared mutable
    state): calibration then runs it on worker threads beside the capture forward (`capture_workers`).
    """

    thread_safe_range: ClassVar[bool] = False

    def range(self, x: torch.Tensor, quantizer: FakeQuantizer) -> tuple[Bound, Bound]:
        raise NotImplementedError

    def weight_range(self, w: torch.Tensor, quantizer: FakeQuantizer) -> tuple[Bound, Bound]:
        return self.range(w, quantizer)

    def weight_range_per_channel(self, w: torch.Tensor, quantizer: FakeQuantizer):
        """Optional: bounds of every output channel at once (tensors (C,)), equal to `weight_range` channel by
        channel; None (the default) means "use weight_range per channel"."""
        return None

    def rule_workers(self) -> int:
        """Threads that run `range` beside the capture forward (0: on the forward's thread, between its layers)."""
        return capture_workers() if self.thread_safe_range else 0

    def calibrate(self, qmodel: nn.Module, ctx: CalibContext) -> None:
        workers = self.rule_workers()
        set_bounds_from_rule(qmodel, ctx, self.range, self.weight_range, desc=self.name or type(self).__name__,
                             channel_rule=self.weight_range_per_channel, workers=workers)
