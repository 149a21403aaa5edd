"""Packed low-bit model files: the integer codes of every quantized weight at its bit-width, in one safetensors file.

A weight quantized with bounds (l, u) at b bits is stored as
    codes = round((clip(w, l, u) - l) / s)  in 0..2^b-1,   s = max((u - l) / (2^b - 1), 1e-12)
packed LSB-first into ceil(numel * b / 8) bytes, with `scale` = s and `lower` = l (float32, one per tensor or one
per output channel). Dequantization `scale * codes + lower` repeats the float32 operations of `fake_quantize`
(spec §2.3), so it gives the fake-quant weight bit for bit. The file also holds every FP parameter (biases, FP
layers, norms) as float32, the bounds `lower`/`upper` of every activation quantizer, and in its metadata the
QuantConfig, the run's meta and the shape/bits/axis of each packed weight.

A layer with a weight transform T (bench.quant.transforms, e.g. CompSRT's Hadamard rotation) stores the codes of
T(W), the tensor its quantizer rounds: its layout entry says so (`"codes_of": "transformed weight"`, the transform's
name and params, `weight_shape`), the transform's state tensors are stored as `<layer>.weight.transform.<key>`,
and loading applies T^-1 to the dequantized codes, which gives the fake-quant weight T^-1(Q(T(W))). A quantizer
type with its own grid (`dequant_grid()`: step and zero point, e.g. `scale-offset`) stores that grid as
scale/lower.

Tensor names (module paths of the quantized model):
    <layer>.weight.codes (uint8), <layer>.weight.scale, <layer>.weight.lower   for each quantized weight
    <quantizer>.lower, <quantizer>.upper                                           for each activation quantizer
    <parameter name>                                                               for each FP parameter
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import bench.quant.rotated_quantizer  # noqa: F401  (registers "rotated-scale-offset")
import bench.quant.scale_offset  # noqa: F401  (registers the "scale-offset" type for activation quantizers)
from bench.errors import CheckpointError
from bench.quant.quantizer import _MIN_STEP, FakeQuantizer, levels
from bench.quant.surgery import QuantConfig, activation_quantizers, quantize_model, weight_quantizers
from bench.quant.transforms import weight_transform_from_record

FORMAT = "sr-ptq-bench/packed"
VERSION = 1
SAFETENSORS_LENGTH_BYTES = 8  # the little-endian u64 in front of the JSON header


# ------------------------------------------------------------------------------------------ bit packing

def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Integer codes (each < 2^bits) -> uint8 bytes, `bits` bits per code, least significant bit first."""
    flat = np.ascontiguousarray(codes, dtype=np.uint8).ravel()
    if bits == 8:
        return flat.copy()
    planes = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_codes`: the first `count` codes as uint8."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8).ravel()
    if bits == 8:
        return packed[:count].copy()
    planes = np.unpackbits(packed, count=count * bits, bitorder="little").reshape(count, bits)
    return (planes << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)


def packed_bytes(numel: int, bits: int) -> int:
    return math.ceil(numel * bits / 8)


# ------------------------------------------------------------------------------------------ codes

def _broadcast(quantizer: FakeQuantizer, p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if quantizer.per_channel_axis is None:
        return p
    shape = [1] * like.dim()
    shape[quantizer.per_channel_axis] = -1
    return p.view(shape)


def weight_step(quantizer: FakeQuantizer) -> torch.Tensor:
    """s = max((u - l) / N, 1e-12) in float32, as `fake_quantize` computes it (a type's own `dequant_grid` step)."""
    if hasattr(quantizer, "dequant_grid"):
        return quantizer.dequant_grid()[0]
    lower, upper = quantizer.lower.detach(), quantizer.upper.detach()
    return torch.clamp((upper - lower) / levels(quantizer.bits), min=_MIN_STEP)


@torch.no_grad()
def weight_codes(quantizer: FakeQuantizer, weight: torch.Tensor) -> torch.Tensor:
    """The quantizer's own integer codes as uint8: round((clip(w, l, u) - l) / s) with the float32 ops of
    `fake_quantize` for the uniform type, the learned up/down choice for learned rounding (FakeQuantizer.codes)."""
    return quantizer.codes(weight.detach()).to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, lower: torch.Tensor, axis: int | None) -> torch.Tensor:
    """scale * codes + lower in float32 (per channel along `axis` when it is not None)."""
    if axis is not None:
        shape = [1] * codes.dim()
        shape[axis] = -1
        scale, lower = scale.view(shape), lower.view(shape)
    return scale * codes.to(torch.float32) + lower


# ------------------------------------------------------------------------------------------ saving

@dataclass(frozen=True)
class PackedInfo:
    """What a packed file holds, in bytes (the file is header + tensors)."""
    path: str
    file_bytes: int
    header_bytes: int        # 8-byte length + JSON header (names, dtypes, shapes, offsets, metadata)
    code_bytes: int          # packed integer codes of the quantized weights
    weight_param_bytes: int  # scale + lower of the weight quantizers (float32)
    act_bound_bytes: int     # lower + upper of the activation quantizers (float32)
    fp_param_bytes: int      # FP parameters (float32)
    quantized_weights: int   # number of weights stored as codes

    def to_dict(self) -> dict:
        return asdict(self)


def _layer_path(quantizer_name: str) -> str:
    return quantizer_name.removesuffix("weight_quant").removesuffix(".")


def _fp_tensors(qmodel: nn.Module, skip: set[str]) -> dict[str, torch.Tensor]:
    """Every state entry (parameters and persistent buffers) that is neither a quantizer bound nor packed."""
    bounds = {f"{name}.{attr}" for name, _ in activation_quantizers(qmodel) for attr in ("lower", "upper")}
    weight_quants = tuple(f"{name}." for name, _, _ in weight_quantizers(qmodel))  # their codes say it all
    return {k: v.detach().cpu().contiguous() for k, v in qmodel.state_dict().items()
            if k not in bounds and k not in skip and not k.startswith(weight_quants)}


def packed_tensors(qmodel: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """(tensors to write, layout of the packed weights) for a calibrated fake-quant model."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict] = {}
    packed_names = set()
    for qname, quantizer, weight in weight_quantizers(qmodel):
        if not quantizer.calibrated:
            raise CheckpointError(f"weight quantizer {qname} is not calibrated: calibrate the model with a method "
                                  f"before `bench export`")
        name = f"{_layer_path(qname)}.weight" if _layer_path(qname) else "weight"
        codes = weight_codes(quantizer, weight).cpu().numpy()
        tensors[f"{name}.codes"] = torch.from_numpy(pack_codes(codes, quantizer.bits))
        tensors[f"{name}.scale"] = weight_step(quantizer).cpu().contiguous()
        lower = quantizer.dequant_grid()[1] if hasattr(quantizer, "dequant_grid") else quantizer.lower.detach()
        tensors[f"{name}.lower"] = lower.cpu().contiguous()
        layout[name] = {"bits": quantizer.bits, "shape": list(weight.shape), "axis": quantizer.per_channel_axis}
        transform = getattr(qmodel.get_submodule(_layer_path(qname)), "weight_transform", None)
        if transform is not None:
            record = transform.to_record()
            layout[name].update({"codes_of": "transformed weight", "transform": record["name"],
                                 "transform_params": record["params"],
                                 "weight_shape": list(qmodel.get_parameter(name).shape)})
            for key, value in record["state"].items():
                tensors[f"{name}.transform.{key}"] = value.contiguous()
        packed_names.add(name)
    for qname, quantizer in activation_quantizers(qmodel):
        tensors[f"{qname}.lower"] = quantizer.lower.detach().cpu().contiguous()
        tensors[f"{qname}.upper"] = quantizer.upper.detach().cpu().contiguous()
        for key, value in quantizer.quant_state().items():  # a non-uniform type's own state (twin-uniform's shift)
            tensors[f"{qname}.state.{key}"] = value.detach().cpu().contiguous()
    tensors.update(_fp_tensors(qmodel, packed_names))
    return tensors, layout


def save_packed(qmodel: nn.Module, path: str | Path, meta: dict | None = None) -> PackedInfo:
    """Write the packed file of a calibrated fake-quant model; returns its measured sizes."""
    from safetensors.torch import save_file

    config: QuantConfig | None = getattr(qmodel, "quant_config", None)
    if config is None:
        raise CheckpointError(f"cannot pack {path}: the model was not made by bench.quant.quantize_model")
    tensors, layout = packed_tensors(qmodel)
    metadata = {
        "format": FORMAT, "version": str(VERSION),
        "config": json.dumps({**config.to_record(), "scope": getattr(qmodel, "quant_scope", config.scope)}),
        "meta": json.dumps(dict(meta or {}), default=str),
        "layout": json.dumps(layout),
        # activation quantizers of a non-uniform type (log2, log-sqrt2, twin-uniform), rebuilt by load_packed
        "act_types": json.dumps({n: q.quant_type for n, q in activation_quantizers(qmodel) if q.quant_type != "uniform"}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return packed_info(path)


def _header_bytes(path: Path) -> int:
    with path.open("rb") as f:
        return SAFETENSORS_LENGTH_BYTES + int.from_bytes(f.read(SAFETENSORS_LENGTH_BYTES), "little")


def packed_info(path: str | Path) -> PackedInfo:
    """Measured sizes of a packed file, by section."""
    path = Path(path)
    tensors, metadata = _read(path)
    layout = json.loads(metadata["layout"])
    act_names = {k for k in tensors if k.endswith((".lower", ".upper")) and k.rsplit(".", 1)[0] not in layout}
    act_names |= {k for k in tensors if ".state." in k}  # a non-uniform activation type's parameters

    def nbytes(keys) -> int:
        return sum(tensors[k].numel() * tensors[k].element_size() for k in keys)

    weight_keys = {f"{n}.{s}" for n in layout for s in ("scale", "lower")}
    code_keys = {f"{n}.codes" for n in layout}
    fp_keys = set(tensors) - weight_keys - code_keys - act_names
    return PackedInfo(path=str(path), file_bytes=path.stat().st_size, header_bytes=_header_bytes(path),
                      code_bytes=nbytes(code_keys), weight_param_bytes=nbytes(weight_keys),
                      act_bound_bytes=nbytes(act_names), fp_param_bytes=nbytes(fp_keys),
                      quantized_weights=sum(math.prod(e["shape"]) for e in layout.values()))


# ------------------------------------------------------------------------------------------ loading

def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"packed model file {path} does not exist; create it with `bench export --format packed`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__}); "
                              f"re-create it with `bench export --format packed`") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a packed model written by `bench export --format packed`")
    return tensors, metadata


def read_packed_meta(path: str | Path) -> dict:
    """{'config': QuantConfig fields, 'meta': the run's meta} of a packed file."""
    _, metadata = _read(Path(path))
    return {"config": json.loads(metadata["config"]), "meta": json.loads(metadata["meta"])}


def load_packed(path: str | Path, fp_model: nn.Module) -> nn.Module:
    """The fake-quant model of a packed file, built on `fp_model`'s architecture (its weights are not used).

    Quantized weights are the dequantized codes (already on their grid), so their quantizers are switched off;
    activation quantizers get the stored bounds. `qmodel.quant_meta` = the run's meta.
    """
    path = Path(path)
    tensors, metadata = _read(path)
    config = QuantConfig(**json.loads(metadata["config"]))
    layout = json.loads(metadata["layout"])
    try:
        qmodel = quantize_model(fp_model, config)
    except Exception as exc:
        raise CheckpointError(f"{path} does not fit this {type(fp_model).__name__}: {exc}") from exc
    state = {}
    weight_quant = {f"{_layer_path(n)}.weight": q for n, q, _ in weight_quantizers(qmodel)}
    if set(weight_quant) != set(layout):
        raise CheckpointError(f"{path} was packed for another model: {len(layout)} quantized weights, this "
                              f"{type(fp_model).__name__} has {len(weight_quant)}; export this model again")
    for name, entry in layout.items():
        count = math.prod(entry["shape"])
        codes = torch.from_numpy(unpack_codes(tensors[f"{name}.codes"].numpy(), entry["bits"], count))
        state[name] = dequantize(codes.reshape(entry["shape"]), tensors[f"{name}.scale"],
                                 tensors[f"{name}.lower"], entry["axis"])
        if "transform" in entry:  # the codes are of T(W): the layer's weight is T^-1 of their values
            prefix = f"{name}.transform."
            transform = weight_transform_from_record({
                "name": entry["transform"], "params": entry["transform_params"],
                "state": {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}})
            state[name] = transform.inverse(state[name], tuple(entry["weight_shape"]))
        weight_quant[name].enabled = False  # the weight is already its fake-quant value
    _restore_act_types(qmodel, json.loads(metadata.get("act_types", "{}")), tensors)
    for _, q in activation_quantizers(qmodel):
        q.calibrated = True  # the stored bounds are copied in as they are (set_bounds could widen them)
    skip = {f"{n}.{s}" for n in layout for s in ("codes", "scale", "lower")}
    state.update({k: v for k, v in tensors.items() if k not in skip and ".weight.transform." not in k})
    _load_state(qmodel, state, path)
    qmodel.quant_meta = json.loads(metadata["meta"])
    return qmodel


def _restore_act_types(qmodel: nn.Module, types: dict[str, str], tensors: dict[str, torch.Tensor]) -> None:
    """Non-uniform activation quantizers back to their type and state (taken out of `tensors`: not module state)."""
    from bench.quant.qtypes import make_quantizer, replace_quantizer
    for name, qtype in types.items():
        replace_quantizer(qmodel, name, make_quantizer(qtype, dict(activation_quantizers(qmodel))[name]))
    for name, q in activation_quantizers(qmodel):
        prefix = f"{name}.state."
        state = {k[len(prefix):]: tensors.pop(k) for k in list(tensors) if k.startswith(prefix)}
        if state:
            q.load_quant_state(state)


def _load_state(qmodel: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    # Weight quantizer bounds are not stored (the codes are): keep the model's own, unused ones.
    own = qmodel.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(("weight_quant.lower", "weight_quant.upper"))]
    extra = [k for k in state if k not in own]
    if missing or extra:
        raise CheckpointError(f"{path} does not fit this model: missing {missing[:2]}, unexpected {extra[:2]}; "
                              f"export this model again")
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value.to(own[key].dtype))
