"""The model zoo: `create_model(name, scale, weights=None, device="cpu")` builds a registered architecture and
loads its weights strictly (see `models.fetch` for where default weights are looked up)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch.nn as nn

from bench.errors import ConfigError
from models.checkpoint import load_checkpoint
from models.fetch import resolve_weights
from models.registry import MODEL_REGISTRY, get_entry, list_models, register_model

# Importing a model module registers it.
ARCHITECTURE_MODULES = ("models.imdn", "models.swinir", "models.carn", "models.rfdn", "models.rlfn", "models.bsrn",
                        "models.fsrcnn", "models.imdtn", "models.rlfn_s")

RANDOM = "random"
DEFAULT = "default"  # same as None (matrix files spell it out)


def _import_architectures() -> None:
    for module_name in ARCHITECTURE_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # an architecture not written yet is simply not registered
            if exc.name != module_name:
                raise


_import_architectures()


def create_model(name: str, scale: int, weights: str | Path | None = None, device: str = "cpu") -> nn.Module:
    """Build `name` for x`scale` in eval mode.

    weights: None (or "default") = the default weights (fetch cache, then shipped project weights; CheckpointError naming
    where to put the file if neither exists), "random" = untrained (tests, training), else a weights file
    (.pth/.pt with any common wrapper, or .safetensors), loaded strictly.
    """
    entry = get_entry(name)
    if scale not in entry.scales:
        raise ConfigError(f"model {name!r} has no x{scale}; its scales are {', '.join(map(str, entry.scales))}")
    model = entry.builder(scale)
    # Recorded for the quantization scopes ("auto" reads the registry default) and for error messages.
    model.model_name = name
    model.scale = scale
    if isinstance(weights, str) and weights == DEFAULT:
        weights = None
    if not (isinstance(weights, str) and weights == RANDOM):
        source = resolve_weights(name, scale, weights)
        load_checkpoint(model, source.path)
        model.weights_source = str(source.path)
    return model.to(device).eval()


__all__ = ["MODEL_REGISTRY", "create_model", "get_entry", "list_models", "load_checkpoint", "register_model"]
