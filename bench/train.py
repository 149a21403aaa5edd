"""Supervised training of a registered SR model (BasicSR-style recipe) with resumable checkpoints.

Recipe: random aligned LR/HR patches from HR images whose LR versions are pre-computed once per scale
with the project's MATLAB-exact `imresize` (what BasicSR does with pre-generated `LR_bicubic`), random
h-flip / v-flip / transpose (the 8 dihedral transforms), L1 loss, Adam(0.9, 0.99), cosine or multistep lr
with optional linear warm-up, AMP on CUDA. Validation PSNR (Y channel, border = scale) runs on a held-out
folder or on images held out of the training folder, never on a test set.

A checkpoint holds everything needed to continue bit-identically on the same device: model, optimizer,
scheduler, AMP scaler, iteration, every RNG state and the best validation PSNR. Derived buffers (SwinIR's
attention masks and relative-position indices, rebuilt by the model) are not stored, which keeps a
SwinIR-light training checkpoint near 11 MB and an exported weight file under 4 MB.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.errors import CheckpointError, ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
# Buffers that a model rebuilds from its hyper-parameters; storing them would only bloat files
# (SwinIR-light's attention masks alone are ~12 MB).
DERIVED_BUFFER_SUFFIXES = ("attn_mask", "relative_position_index")
CHECKPOINT_FORMAT = "sr-ptq-bench-train-v1"
WEIGHTS_FORMAT = "sr-ptq-bench-weights-v1"


# --------------------------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    model: str
    scale: int
    train_dir: Path
    val_dir: Path | None = None
    val_max: int = 0              # validate on at most this many held-out images (0 = all)
    val_crop: int = 0             # centre-crop validation HR images to at most this size (0 = full)
    iters: int = 1000             # schedule length (total iterations)
    stop_at: int | None = None    # stop this session at this iteration (default: iters)
    batch: int = 16
    patch: int = 64               # LR patch size; HR patch = patch * scale
    lr: float = 2e-4
    schedule: str = "cosine"      # "cosine" | "multistep" | "constant"
    warmup: int = 0
    min_lr: float = 1e-7
    weight_decay: float = 0.0
    loss: str = "l1"              # "l1" (RGB) | "l1-y" (luma only, for networks that only predict Y, e.g. FSRCNN)
    train_only: tuple[str, ...] = ()  # parameter-name globs to train, the others frozen (empty = all)
    out_dir: Path = Path(".cache/train")
    ckpt_every: int = 100
    val_every: int = 500
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    time_limit_min: float | None = None
    resume: Path | None = None
    init: Path | None = None
    export: Path | None = None
    amp: bool = True              # only takes effect on CUDA
    progress: bool = True

    def validate(self) -> None:
        if self.scale < 1:
            raise ConfigError(f"--scale {self.scale} is invalid; use 2, 3 or 4")
        for name in ("iters", "batch", "patch", "ckpt_every", "val_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)} must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"--lr {self.lr} must be > 0")
        if self.schedule not in ("cosine", "multistep", "constant"):
            raise ConfigError(f"--schedule {self.schedule!r} is unknown; use cosine, multistep or constant")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss {self.loss!r} is unknown; use {' or '.join(LOSSES)}")
        if self.resume is not None and self.init is not None:
            raise ConfigError("--resume and --init are exclusive: --resume continues a run, --init starts one")

    def recipe(self) -> dict:
        """The hyper-parameters that define the trained weights (stored in checkpoints and exports)."""
        keys = ("model", "scale", "iters", "batch", "patch", "lr", "schedule", "warmup", "min_lr",
                "weight_decay", "seed")
        out = {k: getattr(self, k) for k in keys}
        if self.train_only:
            out["train_only"] = list(self.train_only)
        out.update(loss=self.loss, optimizer="adam(0.9,0.99)", augment="hflip,vflip,transpose",
                   downscale="matlab-bicubic imresize")
        return out


@dataclass
class InitReport:
    loaded: list[str]
    skipped: list[str]   # "name (reason)"

    def summary(self) -> str:
        skipped = "; ".join(self.skipped) if self.skipped else "none"
        return f"init: loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}: {skipped}"


@dataclass
class TrainResult:
    iteration: int
    best_val_psnr: float | None
    last_val_psnr: float | None
    checkpoint: Path
    seconds: float
    stopped_by: str                     # "iters" | "stop_at" | "time_limit" | "interrupt"
    exported: Path | None = None
    history: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- data

def list_images(folder: Path) -> list[Path]:
    """All images under `folder` (recursively), sorted for reproducibility."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"training folder {folder} does not exist; pass a folder of HR images to --train")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}; pass a folder of HR images")
    return paths


def read_rgb(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read image {path} ({exc}); remove or replace the file") from exc


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def split_holdout(paths: list[Path], max_val: int = 0) -> tuple[list[Path], list[Path]]:
    """(train, val): the project's held-out split of a training folder (every 10th image, as in
    `bench.data.calib`, so calibration and training agree on which images are never fitted); `max_val` > 0
    validates on the first `max_val` of them only (the others are still excluded from training)."""
    from bench.data.calib import split_images
    val = split_images(paths, "val")
    held = set(val)
    return [p for p in paths if p not in held], (val[:max_val] if max_val > 0 else val)


@dataclass
class ImagePair:
    name: str
    hr: np.ndarray   # uint8 HxWx3, modcropped
    lr: np.ndarray   # uint8 (H/s)x(W/s)x3


def make_pairs(paths: list[Path], scale: int) -> list[ImagePair]:
    """HR images with their LR computed once by the MATLAB-exact bicubic (the project's only downscaler)."""
    from bench.data.imresize import imresize
    pairs = []
    for path in paths:
        hr = modcrop(read_rgb(path), scale)
        pairs.append(ImagePair(path.stem, hr, imresize(hr, 1.0 / scale)))
    return pairs


def centre_crop_pair(pair: ImagePair, size: int, scale: int) -> ImagePair:
    lr_size = size // scale
    h, w = pair.lr.shape[:2]
    ch, cw = min(h, lr_size), min(w, lr_size)
    top, left = (h - ch) // 2, (w - cw) // 2
    lr = pair.lr[top:top + ch, left:left + cw]
    hr = pair.hr[top * scale:(top + ch) * scale, left * scale:(left + cw) * scale]
    return ImagePair(pair.name, np.ascontiguousarray(hr), np.ascontiguousarray(lr))


class PatchBatcher:
    """Random aligned LR/HR patch batches with dihedral augmentation, from its own seeded generator.

    Uniform over images (as a shuffled BasicSR dataloader with one crop per visit), uniform crop position.
    Its RNG state is part of the checkpoint, so a resumed run draws the same patches.
    """

    def __init__(self, pairs: list[ImagePair], scale: int, patch: int, batch: int, seed: int):
        self.pairs = [p for p in pairs if min(p.lr.shape[:2]) >= patch]
        self.skipped = len(pairs) - len(self.pairs)
        if not self.pairs:
            raise DataError(f"no training image has an LR side >= --patch {patch} at x{scale}; use a smaller --patch")
        self.scale, self.patch, self.batch = scale, patch, batch
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def _one(self) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[int(self.rng.integers(len(self.pairs)))]
        h, w = pair.lr.shape[:2]
        top, left = int(self.rng.integers(h - self.patch + 1)), int(self.rng.integers(w - self.patch + 1))
        s, p = self.scale, self.patch
        lr = pair.lr[top:top + p, left:left + p]
        hr = pair.hr[top * s:(top + p) * s, left * s:(left + p) * s]
        hflip, vflip, transpose = (self.rng.random(3) < 0.5).tolist()
        if hflip:
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        if vflip:
            lr, hr = lr[::-1], hr[::-1]
        if transpose:
            lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
        return lr, hr

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        lrs, hrs = zip(*(self._one() for _ in range(self.batch)))
        to_tensor = lambda xs: torch.from_numpy(np.stack(xs).transpose(0, 3, 1, 2).copy()).float().div_(255.0)
        return to_tensor(lrs), to_tensor(hrs)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


# ----------------------------------------------------------------------------------------- validation

class Validator:
    """Mean PSNR on the Y channel (border = scale) of full-image SR on held-out images."""

    def __init__(self, pairs: list[ImagePair], scale: int, device: str):
        self.pairs, self.scale, self.device = pairs, scale, device

    @torch.no_grad()
    def psnr(self, model: nn.Module) -> float | None:
        if not self.pairs:
            return None
        from bench.inference import upscale
        from bench.metrics.psnr_ssim import psnr_y
        was_training = model.training
        model.eval()
        try:
            values = [psnr_y(upscale(model, p.lr, self.scale, self.device), p.hr, self.scale) for p in self.pairs]
        finally:
            model.train(was_training)
        return float(np.mean(values))


# ------------------------------------------------------------------------------------------------ loss

LOSSES = ("l1", "l1-y")
# BT.601 luma of RGB in [0, 1] without the constant offset (it cancels in a difference); as bench.metrics.
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)


def training_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """L1 on RGB, or on the luma that PSNR is measured on ("l1-y": a Y-only network's chroma is not its own)."""
    if kind == "l1-y":
        weights = sr.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
        return F.l1_loss((sr * weights).sum(1), (hr * weights).sum(1))
    return F.l1_loss(sr, hr)


# ------------------------------------------------------------------------------------------ schedules

def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr after `step` optimizer steps (warm-up, then the chosen decay)."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "multistep":
        # SwinIR's milestones (250k/400k/450k/475k of 500k), as fractions of the run, gamma 0.5.
        milestones = [int(cfg.iters * f) for f in (0.5, 0.8, 0.9, 0.95)]
        return 0.5 ** sum(step >= m for m in milestones)
    span = max(1, cfg.iters - cfg.warmup)
    progress = min(1.0, (step - cfg.warmup) / span)
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def freeze_all_but(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Freeze every parameter whose name matches none of the globs (FSRCNN's fine-tuning of the deconvolution
    alone for another scale); returns the names left trainable, ConfigError if none."""
    import fnmatch
    if not patterns:
        return [name for name, _ in model.named_parameters()]
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(fnmatch.fnmatchcase(name, p) for p in patterns))
        if param.requires_grad:
            trainable.append(name)
    if not trainable:
        names = ", ".join(name for name, _ in list(model.named_parameters())[:6])
        raise ConfigError(f"--train-only {' '.join(patterns)} matches no parameter of the model; "
                          f"parameter names look like: {names}")
    return trainable


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------- checkpoints

def is_derived_key(key: str) -> bool:
    # Models in this project register them non-persistent; the check also covers third-party models.
    return key.endswith(DERIVED_BUFFER_SUFFIXES)


def weights_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers, without the buffers the model rebuilds itself."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not is_derived_key(k)}


def load_weights_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load except for derived buffers, which the model already holds."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not is_derived_key(k)]
    if missing or result.unexpected_keys:
        bad = (missing + list(result.unexpected_keys))[:5]
        raise CheckpointError(f"{source} does not match the model (missing/unexpected keys: {', '.join(bad)}); "
                              "resume with the same --model and --scale that wrote it")


def atomic_torch_save(obj: object, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass a file written by `bench train` (e.g. <out>/last.pt)")
    try:
        # weights_only: a checkpoint never needs arbitrary pickled objects, and must not run code.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}); it is corrupt or not a torch file") from exc
    return ckpt


def rng_states(batcher: PatchBatcher) -> dict:
    # Plain containers and tensors only, so that checkpoints load with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
              "python": random.getstate(), "batcher": batcher.state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict, batcher: PatchBatcher) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    batcher.set_state(states["batcher"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_any_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a training checkpoint, an exported .safetensors or a plain/BasicSR .pth."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; pass a checkpoint written by `bench train` or a .safetensors")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    ckpt = read_checkpoint(path)
    for key in ("model", "params_ema", "params", "state_dict"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{path} holds no state dict; pass a checkpoint written by `bench train`")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def init_from(model: nn.Module, path: Path) -> InitReport:
    """Copy every tensor of `path` whose name and shape match `model` (e.g. x3 from x2: all but the upsampler)."""
    source = load_any_weights(path)
    target = model.state_dict()
    loaded, skipped, update = [], [], {}
    for name, tensor in target.items():
        if is_derived_key(name):
            continue
        if name not in source:
            skipped.append(f"{name} (not in {Path(path).name})")
        elif tuple(source[name].shape) != tuple(tensor.shape):
            skipped.append(f"{name} (shape {tuple(source[name].shape)} -> {tuple(tensor.shape)})")
        else:
            update[name] = source[name]
            loaded.append(name)
    if not loaded:
        raise CheckpointError(f"no tensor of {path} matches model; --init needs weights of the same architecture")
    model.load_state_dict(update, strict=False)
    return InitReport(loaded, skipped)


def export_weights(ckpt_path: Path, out_path: Path) -> Path:
    """Write the model weights of a training checkpoint as .safetensors (fp32, no derived buffers, metadata)."""
    from safetensors.torch import save_file
    ckpt = read_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{ckpt_path} is not a `bench train` checkpoint; export needs <out>/last.pt")
    tensors = {k: v.contiguous().float() if v.is_floating_point() else v.contiguous()
               for k, v in ckpt["model"].items() if not is_derived_key(k)}
    meta = {
        "format": WEIGHTS_FORMAT,
        "model": str(ckpt["model_name"]),
        "scale": str(ckpt["scale"]),
        "iterations": str(ckpt["iteration"]),
        "best_val_psnr": "" if ckpt.get("best_val_psnr") is None else f"{ckpt['best_val_psnr']:.4f}",
        "last_val_psnr": "" if ckpt.get("last_val_psnr") is None else f"{ckpt['last_val_psnr']:.4f}",
        "train_seconds": f"{ckpt.get('seconds', 0.0):.0f}",
        "recipe": json.dumps(ckpt.get("recipe", {}), sort_keys=True),
        "init": str(ckpt.get("init") or ""),
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out_path)
    return out_path


# ------------------------------------------------------------------------------------------- training

class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop checkpoints and stops after the current iteration."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. called from a test runner thread)
                pass
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _log(msg: str) -> None:
    from tqdm import tqdm
    tqdm.write(msg, file=sys.stderr)
    sys.stderr.flush()


def _data(cfg: TrainConfig) -> tuple[PatchBatcher, Validator, list[str]]:
    paths = list_images(cfg.train_dir)
    if cfg.val_dir is not None:
        train_paths, val_paths = paths, list_images(cfg.val_dir)
        val_paths = val_paths[:cfg.val_max] if cfg.val_max > 0 else val_paths
    else:
        train_paths, val_paths = split_holdout(paths, cfg.val_max)
    val_pairs = make_pairs(val_paths, cfg.scale)
    if cfg.val_crop:
        val_pairs = [centre_crop_pair(p, cfg.val_crop, cfg.scale) for p in val_pairs]
    batcher = PatchBatcher(make_pairs(train_paths, cfg.scale), cfg.scale, cfg.patch, cfg.batch, cfg.seed)
    return batcher, Validator(val_pairs, cfg.scale, cfg.device), [p.name for p in val_paths]


def _checkpoint(cfg, model, optimizer, scheduler, scaler, batcher, iteration, best, last, seconds,
                history, val_names, init_source) -> dict:
    return {
        "format": CHECKPOINT_FORMAT,
        "model_name": cfg.model, "scale": cfg.scale, "iteration": iteration,
        "model": weights_state(model),
        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states(batcher),
        "best_val_psnr": best, "last_val_psnr": last, "seconds": seconds,
        "recipe": cfg.recipe(), "val_images": val_names, "init": init_source, "history": history,
    }


def train(cfg: TrainConfig) -> TrainResult:
    """Train `cfg.model` at `cfg.scale`; returns where the final checkpoint is and the validation PSNR."""
    from tqdm import tqdm

    from models import create_model

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    out_dir = Path(cfg.out_dir)
    last_path = out_dir / "last.pt"

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, cfg.scale, weights="random", device="cpu")
    init_source = None
    if cfg.init is not None:
        report = init_from(model, cfg.init)
        init_source = str(cfg.init)
        _log(report.summary())
    if cfg.train_only:
        _log(f"training only: {', '.join(freeze_all_but(model, cfg.train_only))}")
    model.to(device).train()
    optimizer, scheduler = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if use_amp else None
    batcher, validator, val_names = _data(cfg)
    _log(f"train: {len(batcher.pairs)} images ({batcher.skipped} smaller than the patch skipped), "
         f"validation: {len(validator.pairs)} images {val_names}")

    iteration, best, last, prior_seconds, history = 0, None, None, 0.0, []
    if cfg.resume is not None:
        ckpt = read_checkpoint(cfg.resume)
        if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("model_name") != cfg.model or ckpt.get("scale") != cfg.scale:
            raise CheckpointError(f"{cfg.resume} was written for {ckpt.get('model_name')} x{ckpt.get('scale')}, "
                                  f"not {cfg.model} x{cfg.scale}; pass the matching --model/--scale")
        load_weights_state(model, ckpt["model"], cfg.resume)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        restore_rng_states(ckpt["rng"], batcher)
        iteration, best, last = ckpt["iteration"], ckpt["best_val_psnr"], ckpt["last_val_psnr"]
        prior_seconds, history = ckpt.get("seconds", 0.0), ckpt.get("history", [])
        init_source = ckpt.get("init")
        _log(f"resume: {cfg.resume} at iteration {iteration} (best val PSNR {best})")

    stop_at = min(cfg.stop_at or cfg.iters, cfg.iters)
    deadline = None if cfg.time_limit_min is None else time.monotonic() + 60 * cfg.time_limit_min
    start = time.monotonic()
    stopped_by = "iters" if stop_at == cfg.iters else "stop_at"

    def save() -> None:
        seconds = prior_seconds + time.monotonic() - start
        atomic_torch_save(_checkpoint(cfg, model, optimizer, scheduler, scaler, batcher, iteration, best, last,
                                      seconds, history, val_names, init_source), last_path)

    tty = sys.stderr.isatty()
    bar = tqdm(total=stop_at, initial=iteration, disable=not cfg.progress, dynamic_ncols=tty,
               mininterval=1 if tty else 60, file=sys.stderr, desc=f"{cfg.model} x{cfg.scale}")
    loss_ema, step_seconds, steps = None, 0.0, 0
    with _StopRequest() as stop:
        while iteration < stop_at:
            tic = time.monotonic()
            lr_t, hr_t = batcher.next_batch()
            lr_t, hr_t = lr_t.to(device, non_blocking=True), hr_t.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                loss = training_loss(model(lr_t), hr_t, cfg.loss)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            iteration += 1
            loss_value = float(loss.detach())
            step_seconds, steps = step_seconds + time.monotonic() - tic, steps + 1
            loss_ema = loss_value if loss_ema is None else 0.98 * loss_ema + 0.02 * loss_value

            if iteration % cfg.val_every == 0 or iteration == stop_at:
                last = validator.psnr(model)
                if last is not None and (best is None or last > best):
                    best = last
            if iteration % cfg.val_every == 0 or iteration % cfg.ckpt_every == 0:
                history.append({"iter": iteration, "loss_ema": round(loss_ema, 6), "s_per_iter": round(step_seconds / steps, 3),
                                "lr": scheduler.get_last_lr()[0], "val_psnr": last,
                                "seconds": round(prior_seconds + time.monotonic() - start, 1)})
                _log(f"iter {iteration}: loss(ema) {loss_ema:.5f} lr {scheduler.get_last_lr()[0]:.3e} "
                     f"val PSNR {'-' if last is None else f'{last:.3f}'} dB "
                     f"({step_seconds / steps:.2f} s/iter)")
            if iteration % cfg.ckpt_every == 0:
                save()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.4f}", val=("-" if last is None else f"{last:.2f}"), refresh=False)
            if stop.requested:
                stopped_by = "interrupt"
                break
            if deadline is not None and time.monotonic() >= deadline and iteration < stop_at:
                stopped_by = "time_limit"
                break
    bar.close()
    if stopped_by in ("time_limit", "interrupt"):
        last = validator.psnr(model)
        if last is not None and (best is None or last > best):
            best = last
    history.append({"iter": iteration, "loss_ema": None if loss_ema is None else round(loss_ema, 6),
                    "lr": scheduler.get_last_lr()[0], "val_psnr": last, "end": stopped_by,
                    "seconds": round(prior_seconds + time.monotonic() - start, 1)})
    save()
    seconds = prior_seconds + time.monotonic() - start
    _log(f"done: iteration {iteration} ({stopped_by}), val PSNR {last}, best {best}, checkpoint {last_path}")
    exported = export_weights(last_path, cfg.export) if cfg.export is not None else None
    if exported is not None:
        _log(f"exported {exported} ({exported.stat().st_size / 1e6:.2f} MB)")
    return TrainResult(iteration, best, last, last_path, seconds, stopped_by, exported, history)
