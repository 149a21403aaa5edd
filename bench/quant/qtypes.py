"""Quantizer types as a registry: `@register_quantizer_type("name")` on a `FakeQuantizer` subclass.

Every type is built with the same arguments (bits, kind, per_channel_axis, channels), holds the same `lower` /
`upper` parameters and `kind` tag, and answers `quant_type`. A method may swap the type of one quantizer of its
quantized copy (`replace_quantizer`), e.g. a log2 quantizer for a post-softmax map. save_quantized records each
quantizer's type and load_quantized rebuilds it, so a file made by such a method loads back as it was saved.

The built-in type is `uniform` (FakeQuantizer, spec §2.3). Adding a type: subclass FakeQuantizer, override
`forward` (and `quant_state` / `load_quant_state` for learned state beyond the bounds), register it here.
"""
from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from bench.errors import ConfigError
from bench.quant.quantizer import FakeQuantizer

QUANTIZER_TYPES: dict[str, type[FakeQuantizer]] = {}


def register_quantizer_type(name: str) -> Callable[[type[FakeQuantizer]], type[FakeQuantizer]]:
    """Class decorator: register a FakeQuantizer subclass under `name` (also set as its `quant_type`)."""
    def decorate(cls: type[FakeQuantizer]) -> type[FakeQuantizer]:
        if not (isinstance(cls, type) and issubclass(cls, FakeQuantizer)):
            raise TypeError(f"quantizer type {name!r} must subclass bench.quant.FakeQuantizer")
        if name in QUANTIZER_TYPES and QUANTIZER_TYPES[name] is not cls:
            raise ValueError(f"quantizer type {name!r} is already registered ({QUANTIZER_TYPES[name].__name__})")
        cls.quant_type = name
        QUANTIZER_TYPES[name] = cls
        return cls
    return decorate


register_quantizer_type("uniform")(FakeQuantizer)


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


# The built-in non-uniform types register themselves when imported; importing them here (after the registry
# exists) makes them available wherever bench.quant is imported, e.g. to load_quantized.
import bench.quant.log_quantizer  # noqa: E402,F401
import bench.quant.twin_uniform  # noqa: E402,F401
