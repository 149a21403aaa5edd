"""Save/load a calibrated quantization as a small file: bounds + QuantConfig + metadata, not FP weights.

Loading rebuilds the quantized copy from the FP model with the saved config and copies the bounds in;
a file made for another model (different quantizer names, count or shapes) is a CheckpointError.
Version 2 adds, per quantizer, its type (`qtypes` registry) and learned state (`quant_state()`, e.g. a
learned rounding), and the FP tensors a method rewrote in its copy (`surgery.rewrite_fp_tensor`); version-1
files load as before (uniform quantizers, no state, no rewritten tensors). Version 3 is version 2 plus the weight
transforms of the quantized layers (`bench.quant.transforms`: name, params, state per layer path); a file
without transforms is still written as version 2, byte for byte as before.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

import bench.quant.rotated_quantizer  # noqa: F401  (registers "rotated-scale-offset")
import bench.quant.scale_offset  # noqa: F401  (registers the "scale-offset" type that files may name)
from bench.errors import CheckpointError
from bench.quant.qtypes import make_quantizer, replace_quantizer
from bench.quant.surgery import QuantConfig, quantize_model, quantizers, rewrite_fp_tensor, rewritten_fp_tensors
from bench.quant.transforms import set_weight_transform, weight_transform_from_record, weight_transforms

FORMAT = "sr-ptq-bench/quantized"
VERSION = 2
VERSION_TRANSFORMS = 3  # written only when a layer has a weight transform


def save_quantized(qmodel: nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Write the bounds of `qmodel` with its QuantConfig and `meta` (model name/scale, method, ...)."""
    config: QuantConfig = getattr(qmodel, "quant_config", None)
    if config is None:
        raise CheckpointError(f"cannot save {path}: the model was not made by bench.quant.quantize_model")
    transforms = {path: t.to_record() for path, t in weight_transforms(qmodel).items()}
    record = {
        "format": FORMAT,
        "version": VERSION_TRANSFORMS if transforms else VERSION,
        # The resolved scope, so that loading does not depend on how "auto" resolves later.
        "config": {**config.to_record(), "scope": getattr(qmodel, "quant_scope", config.scope)},
        "quantizers": {
            # Python floats (exact for float32) rather than one tensor record per scalar: a smaller file.
            name: {"lower": q.lower.detach().cpu().flatten().tolist(),
                   "upper": q.upper.detach().cpu().flatten().tolist(), "shape": list(q.lower.shape),
                   "bits": q.bits, "kind": q.kind, "calibrated": bool(q.calibrated), "grad_scale": q.grad_scale,
                   "qtype": q.quant_type, "state": {k: v.detach().cpu() for k, v in q.quant_state().items()}}
            for name, q in quantizers(qmodel)
        },
        "rewritten": {name: t.cpu().clone() for name, t in rewritten_fp_tensors(qmodel).items()},
        **({"transforms": transforms} if transforms else {}),
        # JSON-safe (paths become strings) so that the file loads with weights_only=True.
        "meta": json.loads(json.dumps(dict(meta or {}), default=str)),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(record, path)
    return path


def read_quantized(path: str | Path) -> dict:
    """The raw record of a save_quantized file (CheckpointError if it is not one)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"quantized model file {path} does not exist; create it with `bench quantize --out`")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable quantized-model file ({type(exc).__name__}); "
                              f"re-create it with `bench quantize --out`") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a quantized-model file written by `bench quantize` "
                              f"(FP weights go to --weights, not here)")
    return record


def load_quantized(path: str | Path, fp_model: nn.Module) -> nn.Module:
    """Rebuild the quantized copy of `fp_model` from a save_quantized file; `qmodel.quant_meta` = its meta."""
    path = Path(path)
    record = read_quantized(path)
    try:
        config = QuantConfig(**record["config"])
        qmodel = quantize_model(fp_model, config)
    except Exception as exc:
        raise CheckpointError(f"{path} does not fit this {type(fp_model).__name__}: {exc}") from exc
    for layer, entry in record.get("transforms", {}).items():
        try:
            set_weight_transform(qmodel, layer, weight_transform_from_record(entry))
        except Exception as exc:
            raise CheckpointError(f"{path}: the weight transform of {layer} cannot be rebuilt here ({exc}); load the "
                                  f"plugin that registers it, or quantize this model again") from exc
    saved = record["quantizers"]
    mine = dict(quantizers(qmodel))
    if list(saved) != list(mine):
        missing = sorted(set(mine) - set(saved))[:2]
        extra = sorted(set(saved) - set(mine))[:2]
        raise CheckpointError(f"{path} was made for another model: it has {len(saved)} quantizers, this "
                              f"{type(fp_model).__name__} needs {len(mine)} (missing e.g. {missing}, unexpected "
                              f"e.g. {extra}); quantize this model again")
    for name, q in list(mine.items()):
        entry = saved[name]
        qtype = entry.get("qtype", "uniform")
        if qtype != q.quant_type:
            try:
                q = make_quantizer(qtype, q)
            except Exception as exc:
                raise CheckpointError(f"{path}: quantizer {name} is of type {qtype!r}, which this installation "
                                      f"cannot build ({exc}); load the plugin that registers it") from exc
            replace_quantizer(qmodel, name, q)
        if entry["bits"] != q.bits or tuple(entry["shape"]) != tuple(q.lower.shape):
            raise CheckpointError(f"{path}: quantizer {name} has {entry['bits']} bits, shape "
                                  f"{tuple(entry['shape'])}; this model expects {q.bits} bits, shape "
                                  f"{tuple(q.lower.shape)}; quantize this model again")
        with torch.no_grad():
            q.lower.copy_(torch.tensor(entry["lower"], dtype=q.lower.dtype).reshape(q.lower.shape))
            q.upper.copy_(torch.tensor(entry["upper"], dtype=q.upper.dtype).reshape(q.upper.shape))
        q.calibrated = bool(entry["calibrated"])
        q.grad_scale = entry["grad_scale"]
        try:
            q.load_quant_state(dict(entry.get("state", {})))
        except (ValueError, RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: the saved state of quantizer {name} does not fit it ({exc}); "
                                  f"quantize this model again") from exc
    for name, value in record.get("rewritten", {}).items():
        try:
            rewrite_fp_tensor(qmodel, name, value)
        except Exception as exc:
            raise CheckpointError(f"{path}: rewritten tensor {name} does not fit this {type(fp_model).__name__} "
                                  f"({exc}); quantize this model again") from exc
    device = next((p.device for p in fp_model.parameters()), torch.device("cpu"))
    qmodel.to(device)
    qmodel.quant_meta = dict(record.get("meta", {}))
    return qmodel
