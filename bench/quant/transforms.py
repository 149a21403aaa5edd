"""Weight transforms: an invertible map T around a layer's weight quantizer, so the layer computes with
T^-1(Q(T(W))) instead of Q(W) (rotation-based PTQ: CompSRT, QuaRot-style Hadamard rotations).

The contract (what every transform provides, what the core does with it):
  * `forward(w)`: the tensor the weight quantizer sees. It may be larger than w (zero padding) but must keep the
    length of w's dimension 0, the output channels, so a per-output-channel quantizer keeps its bounds' shape;
  * `inverse(v, shape)`: back to a tensor of `shape` (w's), so that inverse(forward(w), w.shape) == w up to
    float32 rounding for an exact transform (a lossy one, e.g. with a pruning mask, documents what it drops);
  * `params()` (JSON-safe, rebuilds the transform with `make_weight_transform(name, **params)`) and
    `state()` / `load_state(state)` for learned or data-dependent tensors (a mask): save_quantized stores both.
The core applies it in QuantLinear/QuantConv2d (`bench.quant.layers`), feeds `forward(w)` to every range rule
and export that reads "the weight a quantizer quantizes" (`surgery.weight_quantizers`), keeps it in saved files
(`bench.quant.io`) and in packed exports (the codes are those of forward(w); bench.export.packed). The ONNX QDQ
export refuses a model with a transform. A layer without a transform (the default) runs exactly as before.

Set one with `set_weight_transform(qmodel, layer_path, transform)` on a quantized copy (never the FP model).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn as nn

from bench.errors import ConfigError

WEIGHT_TRANSFORMS: dict[str, type["WeightTransform"]] = {}


def register_weight_transform(name: str):
    """Class decorator: make a `WeightTransform` subclass buildable by name (saved files store the name)."""
    def decorator(cls):
        if name in WEIGHT_TRANSFORMS and WEIGHT_TRANSFORMS[name] is not cls:
            raise ValueError(f"weight transform {name!r} is registered twice")
        cls.name = name
        WEIGHT_TRANSFORMS[name] = cls
        return cls
    return decorator


def list_weight_transforms() -> list[str]:
    return sorted(WEIGHT_TRANSFORMS)


def make_weight_transform(name: str, **params) -> "WeightTransform":
    try:
        cls = WEIGHT_TRANSFORMS[name]
    except KeyError:
        raise ConfigError(f"unknown weight transform {name!r}; registered: {', '.join(list_weight_transforms())} "
                          f"(load the plugin that registers it)") from None
    return cls(**params)


class WeightTransform(ABC):
    """T and T^-1 around a weight quantizer (module docstring)."""

    name: ClassVar[str] = ""

    @abstractmethod
    def forward(self, w: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def inverse(self, v: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor: ...

    def params(self) -> dict:
        return {}

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"weight transform {self.name!r} has no state, got {sorted(state)}")

    def to_record(self) -> dict:
        return {"name": self.name, "params": self.params(),
                "state": {k: v.detach().cpu().clone() for k, v in self.state().items()}}


def weight_transform_from_record(record: dict) -> WeightTransform:
    transform = make_weight_transform(record["name"], **dict(record.get("params", {})))
    transform.load_state(dict(record.get("state", {})))
    return transform


# ------------------------------------------------------------------------------------------------ Hadamard

def next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """The orthonormal Sylvester-Hadamard matrix H_n / sqrt(n) (n a power of two): symmetric, so H H^T = H H = I."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester-Hadamard matrix needs a power-of-two size, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.kron(h, block)
    return (h / math.sqrt(n)).to(dtype=dtype, device=device)


@register_weight_transform("hadamard")
class HadamardTransform(WeightTransform):
    """Rotation of the weight along dimension `dim` (1: the input features of a Linear (out, in) weight and the
    input channels of a Conv2d (out, in/groups, kh, kw) weight) by H_n / sqrt(n), after zero padding that
    dimension to n = the next power of two. Optional `mask` state (bool, the shape of forward(w)): entries of the
    rotated weight that are set to 0 before quantization (magnitude pruning in the rotated domain; lossy).
    A negative `dim` counts from the end (an activation's features: -1), as torch does."""

    def __init__(self, dim: int = 1) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim == 0:
            raise ConfigError(f"hadamard dim={dim!r} must be a non-zero integer (dimension 0 holds a weight's output "
                              f"channels, an activation's batch)")
        self.dim = dim
        self.mask: torch.Tensor | None = None
        self._matrices: dict[tuple, torch.Tensor] = {}

    def _matrix(self, n: int, like: torch.Tensor) -> torch.Tensor:
        key = (n, like.dtype, like.device)
        if key not in self._matrices:
            self._matrices[key] = hadamard_matrix(n, like.dtype, like.device)
        return self._matrices[key]

    def _dim(self, x: torch.Tensor) -> int:
        if not -x.dim() <= self.dim < x.dim():
            raise ConfigError(f"hadamard dim={self.dim} does not exist in a tensor of shape {tuple(x.shape)}")
        return self.dim % x.dim()

    def _rotate(self, x: torch.Tensor) -> torch.Tensor:
        # H is symmetric: x H along `dim` is both the rotation and its inverse
        dim = self._dim(x)
        moved = x.movedim(dim, -1)
        return (moved @ self._matrix(moved.shape[-1], x)).movedim(-1, dim)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        dim = self._dim(w)
        pad = next_power_of_two(w.shape[dim]) - w.shape[dim]
        if pad:
            widths = [0, 0] * (w.dim() - 1 - dim) + [0, pad]  # F.pad lists the last dimension first
            w = nn.functional.pad(w, widths)
        rotated = self._rotate(w).contiguous()  # a conv weight comes back strided: quantizer kernels compile per layout
        if self.mask is not None:
            rotated = rotated * self.mask.to(rotated.device)
        return rotated

    def inverse(self, v: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        # contiguous: a conv picks its kernel by the weight's layout, and a deployed weight is stored contiguous
        dim = self._dim(v)
        return self._rotate(v).narrow(dim, 0, shape[dim]).contiguous()

    def params(self) -> dict:
        return {"dim": self.dim}

    def set_mask(self, mask: torch.Tensor | None) -> None:
        self.mask = None if mask is None else torch.as_tensor(mask, dtype=torch.bool).detach().clone()

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.mask is None else {"mask": self.mask}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        unknown = set(state) - {"mask"}
        if unknown:
            raise ValueError(f"hadamard transform state has unknown entries {sorted(unknown)}")
        self.set_mask(state.get("mask"))

    def __getstate__(self):  # deepcopy/pickle: the matrices are rebuilt on use
        return {**self.__dict__, "_matrices": {}}


# ------------------------------------------------------------------------------------------------ model level

def set_weight_transform(qmodel: nn.Module, layer_path: str, transform: WeightTransform | None) -> None:
    """Quantize the weight of the quantized layer `layer_path` through `transform` (None removes it). The weight
    quantizer must not be calibrated yet: its bounds would belong to the untransformed weight."""
    from bench.quant.layers import TRANSFORMABLE_LAYER_TYPES
    layer = qmodel.get_submodule(layer_path) if layer_path else qmodel
    if not isinstance(layer, TRANSFORMABLE_LAYER_TYPES):
        raise ConfigError(f"{layer_path!r} is a {type(layer).__name__}, not a quantized Linear or Conv2d; a weight "
                          f"transform goes on the layers bench.quant.weight_quantizers lists")
    if transform is not None:
        rotated = transform.forward(layer.weight.detach())
        if rotated.shape[0] != layer.weight.shape[0]:
            raise ConfigError(f"weight transform {transform.name!r} changes the output channels of {layer_path} "
                              f"({layer.weight.shape[0]} -> {rotated.shape[0]}); it must keep dimension 0")
    layer.weight_transform = transform


def weight_transforms(qmodel: nn.Module) -> dict[str, WeightTransform]:
    """{layer path: transform} of every quantized layer that has one, in module order."""
    return {path: m.weight_transform for path, m in qmodel.named_modules()
            if getattr(m, "weight_transform", None) is not None}


__all__ = ["WeightTransform", "HadamardTransform", "WEIGHT_TRANSFORMS", "register_weight_transform",
           "make_weight_transform", "list_weight_transforms", "weight_transform_from_record", "hadamard_matrix",
           "next_power_of_two", "set_weight_transform", "weight_transforms"]
