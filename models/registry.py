"""Model registry: `@register_model` on a builder, one `create_model` to build and load it.

A builder takes the upscaling factor and returns an `nn.Module` in eval mode with random weights.
`create_model` then resolves weights (explicit path, fetch cache, or the project's shipped default)
and loads them strictly through `models.checkpoint.load_checkpoint`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn

from bench.errors import ConfigError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[[int], nn.Module]
    scales: tuple[int, ...]
    description: str = ""
    # Scopes (see bench.quant.scopes) that make sense for this architecture, first = default.
    quant_scopes: tuple[str, ...] = ("ptq4sr",)
    multi_scale: bool = False  # one network holds every scale (CARN-M)
    extra: dict = field(default_factory=dict)


MODEL_REGISTRY: dict[str, ModelEntry] = {}


class UnknownModelError(KeyError, ConfigError):
    # A KeyError for dict-like callers, a ConfigError so that the CLI prints it as one line.
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


def register_model(name: str, *, scales: tuple[int, ...], description: str = "",
                   quant_scopes: tuple[str, ...] = ("ptq4sr",), multi_scale: bool = False):
    """Decorator: register `builder(scale) -> nn.Module` under `name`."""
    def decorator(builder: Callable[[int], nn.Module]):
        if name in MODEL_REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        MODEL_REGISTRY[name] = ModelEntry(name, builder, tuple(scales), description,
                                          tuple(quant_scopes), multi_scale)
        return builder
    return decorator


def get_entry(name: str) -> ModelEntry:
    if name not in MODEL_REGISTRY:
        known = ", ".join(sorted(MODEL_REGISTRY))
        raise UnknownModelError(f"unknown model {name!r}; known models: {known} (see `bench models list`)")
    return MODEL_REGISTRY[name]


def list_models() -> list[str]:
    return sorted(MODEL_REGISTRY)
