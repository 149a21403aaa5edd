"""Building blocks shared by several architectures."""
import torch
import torch.nn as nn


class MatMul(nn.Module):
    """`a @ b` as a module, so that quantization can wrap a batch matmul like any other layer."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b
