"""The `noisy` quantizer type: a fixed per-channel offset added to the input before the uniform quantizer.

    forward(x) = Q(x + N)            N: one value per channel along `noise_axis` (a buffer, saved with the file)

The offset is added in every mode, also when the quantizer is disabled or observing: the layer that owns
the quantizer removes W N through its bias (a method rewrites it with `surgery.rewrite_fp_tensor`), so the
model with the quantizers turned off stays the FP model, and a range rule observing the input sees x + N,
the tensor the quantizer will round. Without an offset (N empty) the type is the plain uniform quantizer.

This is the mechanism of NoisyQuant's noisy bias, searched or fixed (methods/noisyquant.py), but knows no method: any
per-channel shift of a quantizer's input that the next linear map absorbs can use it.
"""
from __future__ import annotations

import torch

from bench.quant.qtypes import register_quantizer_type
from bench.quant.quantizer import FakeQuantizer


@register_quantizer_type("noisy")
class NoisyFakeQuantizer(FakeQuantizer):
    """FakeQuantizer whose input is shifted by a fixed per-channel offset `noise` along `noise_axis`."""

    def __init__(self, bits: int, kind: str = "act", per_channel_axis: int | None = None,
                 channels: int | None = None) -> None:
        super().__init__(bits, kind, per_channel_axis=per_channel_axis, channels=channels)
        self.register_buffer("noise", torch.zeros(0))
        self.noise_axis = -1

    @torch.no_grad()
    def set_noise(self, noise: torch.Tensor, axis: int) -> None:
        """Use `noise` (1-D, one entry per channel of the input along `axis`) from now on."""
        noise = torch.as_tensor(noise, dtype=torch.float32).detach()
        if noise.dim() != 1 or noise.numel() == 0:
            raise ValueError(f"the offset must be a non-empty 1-D tensor (one value per channel), got shape "
                             f"{tuple(noise.shape)}")
        if not torch.isfinite(noise).all():
            raise ValueError("the offset has non-finite values")
        self.noise = noise.to(self.lower.device).clone()
        self.noise_axis = int(axis)

    def _offset(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[self.noise_axis] != self.noise.numel():
            raise RuntimeError(f"noisy quantizer holds {self.noise.numel()} offsets but its input has "
                               f"{x.shape[self.noise_axis]} channels along axis {self.noise_axis}")
        shape = [1] * x.dim()
        shape[self.noise_axis] = -1
        return self.noise.to(x.dtype).view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise.numel():
            x = x + self._offset(x)
        return super().forward(x)

    def quant_state(self) -> dict[str, torch.Tensor]:
        if not self.noise.numel():
            return {}
        return {"noise": self.noise.detach().cpu().clone(), "noise_axis": torch.tensor(self.noise_axis)}

    def load_quant_state(self, state: dict[str, torch.Tensor]) -> None:
        unknown = sorted(set(state) - {"noise", "noise_axis"})
        if unknown:
            raise ValueError(f"noisy quantizer state has unknown entries {unknown}")
        if not state:
            self.noise = torch.zeros(0, device=self.lower.device)
            return
        if "noise" not in state or "noise_axis" not in state:
            raise ValueError("noisy quantizer state needs both 'noise' and 'noise_axis'")
        self.set_noise(state["noise"], int(state["noise_axis"]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, offsets={self.noise.numel()} along axis {self.noise_axis}"
