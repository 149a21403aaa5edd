"""Strict checkpoint loading: every key and every shape must match, and a mismatch names the keys.

Accepted inputs: a path to a `.pth`/`.pt` (plain state dict or a `params`/`params_ema`/`state_dict`/`model`
wrapper, as saved by BasicSR, SwinIR, DataParallel or `bench train`) or a `.safetensors` file, or an in-memory
state dict. Prefixes added by wrappers (`module.`, `_orig_mod.`) are stripped. Buffers that a model derives from
its configuration (SwinIR's `attn_mask` / `relative_position_index`, listed by the model in
`derived_buffer_suffixes`) are dropped from the checkpoint: they are recomputed, never trusted from a file. So are
the branches of a multi-scale checkpoint that the model declares unused (`unused_checkpoint_prefixes`, CARN-M).
A model may also help the error message tell a scale mismatch: `scale` + `upsampler_weight_key` (pixel-shuffle
conv whose output channels are c * scale**2), or its own `checkpoint_scale(state)`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from bench.errors import CheckpointError

StateDict = dict[str, torch.Tensor]
PathOrState = str | Path | Mapping[str, torch.Tensor]

# Wrapper keys in order of preference; 'params' first because SwinIR's official test loads 'params' for the
# classical and lightweight checkpoints even when an EMA copy is present.
WRAPPER_KEYS = ("params", "params_ema", "state_dict", "model")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_NAMED_KEYS = 6  # per category in the one-line message; the full lists are on the exception


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not match the model; the full key lists are kept as attributes."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str],
                 mismatched: list[tuple[str, tuple, tuple]]):
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


@dataclass
class LoadReport:
    source: str
    n_tensors: int
    dropped: list[str] = field(default_factory=list)  # derived buffers and unused branches found in the file


# ------------------------------------------------------------------------------------------------ reading

def read_state_dict(path_or_state: PathOrState) -> tuple[StateDict, str]:
    """(state dict with wrapper and prefixes removed, a label naming the source for error messages)."""
    if isinstance(path_or_state, Mapping):
        return _normalise(dict(path_or_state), "<state dict>"), "<state dict>"
    path = Path(path_or_state)
    label = str(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; check the path (or fetch it with "
                              f"`bench models fetch NAME --scale S`)")
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    return _normalise(raw, label), label


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types for truncated/garbled headers)
        raise CheckpointError(f"{path} is not a readable .safetensors file ({_short(exc)}); "
                              f"re-download or re-export it") from None


def _read_torch(path: Path) -> dict:
    try:
        # weights_only: a weights file never needs arbitrary pickled objects, and must not run code.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (truncated zip, text, foreign pickle: all "not a checkpoint")
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_short(exc)}); "
                              f"re-download it or pass a .pth/.safetensors weights file") from None


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _unwrap(obj, label: str) -> dict:
    for _ in range(3):  # wrappers nest at most a couple of levels ({'model': {'params': ...}})
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise CheckpointError(f"{label} holds no state dict (expected tensors, or one of the keys "
                          f"{'/'.join(WRAPPER_KEYS)}); pass a model weights file")


def _normalise(obj, label: str) -> StateDict:
    state = _unwrap(obj, label)
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# ------------------------------------------------------------------------------------------------ checking

def derived_suffixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "derived_buffer_suffixes", ()))


def drop_derived(state: StateDict, model: nn.Module) -> tuple[StateDict, list[str]]:
    """Remove the derived buffers the model recomputes itself, and the branches of a multi-scale checkpoint
    that this model does not use (`unused_checkpoint_prefixes`, e.g. CARN-M x2 ignores the x3/x4 upsamplers)."""
    suffixes = derived_suffixes(model)
    prefixes = tuple(getattr(model, "unused_checkpoint_prefixes", ()))
    dropped = [k for k in state if k.rsplit(".", 1)[-1] in suffixes or (prefixes and k.startswith(prefixes))]
    skip = set(dropped)
    return {k: v for k, v in state.items() if k not in skip}, dropped


def compare(model: nn.Module, state: StateDict) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """(missing, unexpected, mismatched (key, checkpoint shape, model shape)) in the model's key order."""
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    mismatched = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in target.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    return missing, unexpected, mismatched


def checkpoint_scale(model: nn.Module, state: StateDict) -> int | None:
    """The upscaling factor a checkpoint was trained for, when the model can tell (None otherwise).

    A model may define `checkpoint_scale(state)`; else the generic rule reads the pixel-shuffle conv named by
    `model.upsampler_weight_key`, whose output channels are `c * scale**2`.
    """
    custom = getattr(model, "checkpoint_scale", None)
    if callable(custom):
        return custom(state)
    key = getattr(model, "upsampler_weight_key", None)
    scale = getattr(model, "scale", None)
    if key is None or scale is None or key not in state:
        return None
    per_pixel = model.state_dict()[key].shape[0] // (scale * scale)
    ratio, rest = divmod(state[key].shape[0], per_pixel)
    root = round(ratio ** 0.5)
    return root if rest == 0 and root * root == ratio else None


def _only_upsampler_differs(model: nn.Module, missing, unexpected, mismatched) -> bool:
    """True when every differing key belongs to the upsampler (prefix `upsampler_prefix`, default: the first
    component of `upsampler_weight_key`), i.e. the checkpoint is the same network at another scale."""
    key = getattr(model, "upsampler_weight_key", None)
    if key is None:
        return True
    prefix = getattr(model, "upsampler_prefix", key.split(".")[0] + ".")
    return all(k.startswith(prefix) for k in [*missing, *unexpected, *(m[0] for m in mismatched)])


def _mismatch_message(label: str, model: nn.Module, state: StateDict, missing, unexpected, mismatched) -> str:
    model_scale = getattr(model, "scale", None)
    ckpt_scale = checkpoint_scale(model, state)
    name = getattr(model, "model_name", type(model).__name__)
    if (ckpt_scale is not None and model_scale is not None and ckpt_scale != model_scale
            and _only_upsampler_differs(model, missing, unexpected, mismatched)):
        return (f"checkpoint {label} is for x{ckpt_scale}, model {name} is x{model_scale}; "
                f"pass the x{model_scale} weights file")
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if mismatched:
        shapes = [f"{k} {tuple(c)} vs model {tuple(m)}" for k, c, m in mismatched]
        parts.append(f"{len(mismatched)} with another shape ({_names(shapes)})")
    overlap = len(model.state_dict()) - len(missing)
    hint = ("it is for another architecture" if overlap < len(model.state_dict()) // 2
            else "it is for another configuration")
    return f"checkpoint {label} does not match model {name}: {'; '.join(parts)}; {hint}, pass the weights of {name}"


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_NAMED_KEYS])
    return shown + (f", +{len(keys) - MAX_NAMED_KEYS} more" if len(keys) > MAX_NAMED_KEYS else "")


# ------------------------------------------------------------------------------------------------ loading

def load_checkpoint(model: nn.Module, path_or_state: PathOrState, *, strict: bool = True) -> LoadReport:
    """Load weights into `model` in place. strict=True: any missing/unexpected/mis-shaped key is a
    CheckpointError naming them; strict=False: load the matching tensors, still refusing shape mismatches."""
    state, label = read_state_dict(path_or_state)
    state, dropped = drop_derived(state, model)
    missing, unexpected, mismatched = compare(model, state)
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointMismatchError(_mismatch_message(label, model, state, missing, unexpected, mismatched),
                                      missing, unexpected, mismatched)
    extra = set(unexpected)
    model.load_state_dict({k: v for k, v in state.items() if k not in extra}, strict=False)
    return LoadReport(label, len(state) - len(unexpected), dropped)
