"""The `rotated-scale-offset` quantizer type: a `scale-offset` quantizer that rounds its input in a Hadamard-rotated
domain and rotates the result back,

    forward(x) = T^-1(Q(T(x)))      T = bench.quant.transforms.HadamardTransform(dim=rotate_axis)

(zero padding of the rotated axis to a power of two, cropped after T^-1). An observing quantizer hands T(x) to its
observer (a range rule bounds what the quantizer rounds) and returns x; a disabled one returns x. Without a rotation
axis (the default) it is the `scale-offset` type. The axis is its saved state.

This is how CompSRT's released code quantizes every activation (methods/compsrt.py, `rotate_acts`); for weights the
core has a layer-level weight transform (bench/quant/transforms.py) that range rules and exports see.
"""
from __future__ import annotations

import torch

from bench.quant.qtype_registry import register_quantizer_type
from bench.quant.scale_offset import ScaleOffsetQuantizer
from bench.quant.transforms import HadamardTransform


@register_quantizer_type("rotated-scale-offset")
class RotatedScaleOffsetQuantizer(ScaleOffsetQuantizer):
    """ScaleOffsetQuantizer applied to x rotated by a Hadamard matrix along `rotate_axis` (None: no rotation)."""

    def __init__(self, bits: int, kind: str = "act", per_channel_axis: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__(bits, kind, per_channel_axis=per_channel_axis, channels=channels)
        self.rotate_axis: int | None = None
        self._transform: HadamardTransform | None = None

    def set_rotation(self, axis: int | None) -> None:
        """Rotate along `axis` of the input (-1: a Linear input's features, 1: an NCHW conv input's channels)."""
        if self.per_channel and axis is not None:
            raise ValueError("a per-channel quantizer cannot rotate its input (the channels would mix)")
        self.rotate_axis = None if axis is None else int(axis)
        self._transform = None if axis is None else HadamardTransform(dim=int(axis))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self._transform
        if t is None:
            return super().forward(x)
        if self.observer is not None:
            self.observer(t.forward(x))
            return x
        if self.passes_through(x):  # disabled (or raises when uncalibrated)
            return x
        return t.inverse(super().forward(t.forward(x)), x.shape)

    def quant_state(self) -> dict[str, torch.Tensor]:
        state = super().quant_state()
        if self.rotate_axis is not None:
            state["rotate_axis"] = torch.tensor(self.rotate_axis)
        return state

    def load_quant_state(self, state: dict[str, torch.Tensor]) -> None:
        state = dict(state)
        axis = state.pop("rotate_axis", None)
        super().load_quant_state(state)
        self.set_rotation(None if axis is None else int(axis))
