"""Quantizer types as a registry: `@register_quantizer_type("name")` on a `FakeQuantizer` subclass.

Every type is built with the same arguments (bits, kind, per_channel_axis, channels), holds the same `lower` /
`upper` parameters and `kind` tag, and answers `quant_type`. A method may swap the type of one quantizer of its
quantized copy (`replace_quantizer`), e.g. a log2 quantizer for a post-softmax map. save_quantized records each
quantizer's type and load_quantized rebuilds it, so a file made by such a method loads back as it was saved.

The built-in type is `uniform` (FakeQuantizer, spec §2.3). Adding a type: subclass FakeQuantizer, override
`forward` (and `quant_state` / `load_quant_state` for learned state beyond the bounds), register it with
`register_quantizer_type` (defined in `bench.quant.qtype_registry`, importable from here).
"""
from __future__ import annotations

import torch.nn as nn

# The built-in non-uniform types register themselves when imported; importing them here makes them available
# wherever a type is looked up, e.g. to load_quantized in a process that imported no method.
import bench.quant.integer_grid  # noqa: F401
import bench.quant.log_quantizer  # noqa: F401
import bench.quant.twin_uniform  # noqa: F401
from bench.errors import ConfigError
from bench.quant.qtype_registry import QUANTIZER_TYPES, register_quantizer_type
from bench.quant.quantizer import FakeQuantizer

__all__ = ["QUANTIZER_TYPES", "register_quantizer_type", "list_quantizer_types", "quantizer_class", "make_quantizer",
           "replace_quantizer"]


def list_quantizer_types() -> list[str]:
    return sorted(QUANTIZER_TYPES)


def quantizer_class(name: str) -> type[FakeQuantizer]:
    try:
        return QUANTIZER_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown quantizer type {name!r}; registered types: "
                          f"{', '.join(list_quantizer_types())}") from None


def make_quantizer(name: str, like: FakeQuantizer, **options) -> FakeQuantizer:
    """A quantizer of type `name` with the bits, kind and channel layout of `like` (bounds uncalibrated);
    `options` go to the type's constructor (e.g. a step ratio)."""
    channels = like.lower.numel() if like.per_channel else None
    new = quantizer_class(name)(like.bits, like.kind, per_channel_axis=like.per_channel_axis, channels=channels,
                                **options)
    new.enabled = like.enabled
    return new.to(like.lower.device)


def replace_quantizer(qmodel: nn.Module, name: str, new: FakeQuantizer) -> FakeQuantizer:
    """Put `new` where the quantizer `name` (a path from `quantizers(qmodel)`) is; returns the old one."""
    parent_path, _, child = name.rpartition(".")
    parent = qmodel.get_submodule(parent_path) if parent_path else qmodel
    old = getattr(parent, child, None)
    if not isinstance(old, FakeQuantizer):
        raise ConfigError(f"{name!r} is not a quantizer of this model; names come from bench.quant.quantizers()")
    if old.kind != new.kind or old.per_channel_axis != new.per_channel_axis or old.lower.shape != new.lower.shape:
        raise ConfigError(f"cannot replace quantizer {name} ({old.kind}, bounds {tuple(old.lower.shape)}) by one "
                          f"with kind {new.kind}, bounds {tuple(new.lower.shape)}: the layout must match")
    setattr(parent, child, new)
    return old
