"""Non-learned reference rows: MATLAB-bicubic upscaling, wrapped as a model so `evaluate` scores it
with exactly the protocol of the networks (same border crop, Y channel, rounding)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


class BicubicUpsampler(nn.Module):
    """x in [0, 1], (B, 3, h, w) -> MATLAB-compatible bicubic upscaling by `scale` (bench.data.imresize)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from bench.data.imresize import imresize
        outputs = []
        for image in x:
            # The LR came from uint8, so rounding back to uint8 is exact.
            u8 = (image.detach().float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
            up = imresize(np.ascontiguousarray(u8), self.scale)
            outputs.append(torch.from_numpy(np.ascontiguousarray(up)).permute(2, 0, 1).float() / 255.0)
        return torch.stack(outputs).to(x.device)
