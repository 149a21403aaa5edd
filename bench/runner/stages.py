"""The runner's calls into the rest of the project, one small function per stage.

Models, data, quantization and evaluation belong to other packages; this module only adapts the matrix's
settings to their interfaces (CONTRACTS.md), so that the executor stays free of their details.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.runner.matrix import CalibrationSpec, DatasetSpec, ModelSpec

# ------------------------------------------------------------------------------------------------ models

def resolve_weights(spec: ModelSpec, scale: int, weights_dir: Path | None) -> str | Path | None:
    """The `weights` argument of `create_model` for a matrix entry (resolved by `models.fetch`: the runner
    knows no model, and a model with shipped weights needs no runner change)."""
    from models.fetch import resolve_weights_spec
    return resolve_weights_spec(spec.name, scale, spec.weights, weights_dir)


def build_model(spec: ModelSpec, scale: int, weights_dir: Path | None, device: torch.device) -> nn.Module:
    from models import create_model
    weights = resolve_weights(spec, scale, weights_dir)
    model = create_model(spec.name, scale, weights=weights, device=str(device))
    return model.eval()


def weights_identity(spec: ModelSpec, scale: int, weights_dir: Path | None) -> str | None:
    """Digest of the weights file a matrix entry resolves to ("random" for random init, None if missing)."""
    if spec.weights == "random":
        return "random"
    from models.fetch import weights_file_for_spec
    path = weights_file_for_spec(spec.name, scale, spec.weights, weights_dir)
    return None if path is None else _file_digest(path)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def describe_weights(spec: ModelSpec, scale: int, weights_dir: Path | None) -> str:
    weights = resolve_weights(spec, scale, weights_dir)
    return "default" if weights is None else str(weights)


# -------------------------------------------------------------------------------------------------- data

class DatasetView:
    """A dataset restricted to its first `max_images` items, each centre-cropped to `crop` LR pixels.

    `on_item` is called on every item access (progress bars). Other attributes are the base dataset's.
    """

    def __init__(self, base: Any, scale: int, crop: int | None = None, max_images: int | None = None,
                 on_item: Callable[[], None] | None = None) -> None:
        self.base = base
        self.scale = scale
        self.crop = crop
        self.count = min(len(base), max_images) if max_images else len(base)
        self.on_item = on_item

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        if not -self.count <= index < self.count:
            raise IndexError(index)
        item = self.base[index % self.count]
        if self.on_item is not None:
            self.on_item()
        return _centre_crop(item, self.crop, self.scale) if self.crop else item

    def __iter__(self):
        for index in range(self.count):
            yield self[index]

    def __getattr__(self, name: str):
        return getattr(self.base, name)

    @property
    def expected_count(self) -> int | None:
        return getattr(self.base, "expected_count", None)

    @property
    def is_subset(self) -> bool:
        # Any shrinking (fewer images or crops) makes the numbers incomparable with full-set results.
        return bool(getattr(self.base, "is_subset", False) or self.crop or self.count < len(self.base))


def _centre_crop(pair: Any, crop: int, scale: int):
    lr, hr = pair.lr, pair.hr
    h, w = lr.shape[:2]
    ch, cw = min(crop, h), min(crop, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    lr_c = np.ascontiguousarray(lr[top:top + ch, left:left + cw])
    hr_c = np.ascontiguousarray(hr[top * scale:(top + ch) * scale, left * scale:(left + cw) * scale])
    if dataclasses.is_dataclass(pair):
        return dataclasses.replace(pair, lr=lr_c, hr=hr_c)
    return type(pair)(pair.name, hr_c, lr_c)


def load_data(spec: DatasetSpec, scale: int, data_root: Path | None):
    from bench.data.dataset import load_dataset
    return load_dataset(spec.name, scale, data_root=data_root)


def dataset_view(base: Any, spec: DatasetSpec, scale: int, on_item: Callable[[], None] | None = None) -> DatasetView:
    return DatasetView(base, scale, spec.crop, spec.max_images, on_item)


# -------------------------------------------------------------------------------------------- evaluation

@dataclasses.dataclass
class EvalOutcome:
    psnr: float
    ssim: float
    lpips: float | None
    per_image: list[dict]
    seconds: float


def _as_dict(item: Any) -> dict:
    if dataclasses.is_dataclass(item):
        return {k: v for k, v in dataclasses.asdict(item).items() if not isinstance(v, np.ndarray)}
    return {k: v for k, v in vars(item).items() if not isinstance(v, np.ndarray)}


def evaluate_on(model: nn.Module, dataset: DatasetView, scale: int, device: torch.device, lpips: bool,
                save_dir: Path | None = None) -> EvalOutcome:
    """`bench.evaluate.evaluate` on the view; SR outputs are written to `save_dir` as PNG when given."""
    from bench.evaluate import evaluate
    start = time.perf_counter()
    result = evaluate(model, dataset, scale, str(device), lpips=lpips, progress=False,
                      return_outputs=save_dir is not None)
    seconds = time.perf_counter() - start
    for name, image in (result.outputs or {}).items():
        write_png(save_dir / f"{name}.png", image)
    return EvalOutcome(float(result.psnr), float(result.ssim),
                       None if result.lpips is None else float(result.lpips),
                       [_as_dict(image) for image in result.per_image], seconds)


def write_png(path: Path, image_u8: np.ndarray) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    Image.fromarray(image_u8).save(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------- quantization

def train_dir(calib: CalibrationSpec, train_root: Path | None) -> Path | None:
    """Folder of HR training images: the matrix's `calibration.train_dir` (relative to --calib), else --calib.

    `train_dir: sample-train` names the embedded scikit-image calibration photos; an explicit --calib wins.
    """
    from bench.data.sample import SAMPLE_TRAIN_NAME, sample_train_dir
    if calib.train_dir == SAMPLE_TRAIN_NAME:
        return train_root if train_root is not None else sample_train_dir()
    if calib.train_dir is None:
        return train_root
    path = Path(calib.train_dir)
    return path if path.is_absolute() or train_root is None else Path(train_root) / path


def calibration_data(calib: CalibrationSpec, scale: int, folder: Path | None,
                     split: str = "calib") -> torch.Tensor:
    """The seeded batch of LR patches every method calibrates on (cached by bench.data.calib)."""
    from bench.data.calib import calibration_batch
    if folder is None:
        from bench.errors import ConfigError
        raise ConfigError("calibration needs HR training images, never a test set: pass --calib DIR (or set "
                          "BENCH_CALIB_DIR), e.g. a folder of T91 + BSD200 or DIV2K (the paper's) images; or set "
                          "`calibration: {train_dir: sample-train}` in the matrix to calibrate on the nine embedded "
                          "scikit-image photos, as the demo does")
    return calibration_batch(folder, scale, n=calib.n, patch=calib.patch, seed=calib.seed, split=split)


def calibrate(fp_model: nn.Module, method_name: str, params: dict, w_bits: int, a_bits: int,
              batch: torch.Tensor, val_batch: torch.Tensor | None, folder: Path | None, device: torch.device,
              scope: str, seed: int, progress: bool,
              prepare: Callable[[Any], None] | None = None,
              layer_bits: dict | None = None) -> tuple[nn.Module, float, dict]:
    """Quantize a copy of `fp_model` with the method; returns (qmodel, seconds, method.describe()).
    `prepare(method)` runs before calibration (bench.runner.reuse hands over stage-one bounds there).
    `layer_bits`: per-layer (w, a) bits of a mixed-precision cell (`mixed_layer_bits`)."""
    from bench.quant.pipeline import CalibContext, quantize_with_method
    from methods.registry import create_method
    method = create_method(method_name, **params)
    if prepare is not None:
        prepare(method)
    ctx = CalibContext(fp_model=fp_model, calib_batch=batch.to(device), train_dir=folder,
                       val_batch=None if val_batch is None else val_batch.to(device), device=device, seed=seed,
                       progress=progress)
    qmodel, seconds = quantize_with_method(fp_model, method, w_bits, a_bits, ctx, scope=scope, layer_bits=layer_bits)
    return qmodel.eval(), float(seconds), dict(method.describe())


def mixed_layer_bits(fp_model: nn.Module, model_name: str, scale: int, spec: Any, method_name: str, params: dict,
                     scope: str, batch: torch.Tensor, calib: CalibrationSpec, folder: Path | None,
                     device: torch.device) -> tuple[dict, dict]:
    """(layer_bits, what the record keeps) of a mixed-precision cell: the method's per-layer sensitivity on
    held-out patches of the calibration folder, then the exact ILP at the budget (bench.mixed)."""
    from bench.mixed.sensitivity import score_batch
    from bench.mixed.spec import mixed_allocation
    n, patch = spec.score_size(calib.n, calib.patch)
    score, source = score_batch(folder, scale, n=n, patch=patch, seed=calib.seed)
    allocation, sensitivity = mixed_allocation(fp_model, model_name, scale, spec, method_name, params, scope,
                                               batch, score, train_dir=folder, device=device, seed=calib.seed)
    return dict(allocation.layer_bits), {"spec": spec.to_dict(), "tag": spec.tag, **allocation.to_dict(),
                                         "score_patches": f"{n} x {patch}x{patch}, {source}",
                                         "sensitivity_seconds": sensitivity.seconds,
                                         "sensitivity_cached": sensitivity.cached}


def save_bounds(qmodel: nn.Module, path: Path, meta: dict) -> None:
    """Atomic save: a kill mid-write leaves no truncated file under `path`."""
    from bench.quant import save_quantized
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_quantized(qmodel, tmp, meta)
    os.replace(tmp, path)


def load_bounds(path: Path, fp_model: nn.Module) -> tuple[nn.Module, dict]:
    from bench.quant import load_quantized
    loaded = load_quantized(path, fp_model)
    qmodel, meta = loaded if isinstance(loaded, tuple) else (loaded, getattr(loaded, "quant_meta", {}) or {})
    return qmodel.eval(), dict(meta)
