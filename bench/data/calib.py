"""Calibration and fine-tuning patches from a folder of HR training images (spec §3.1, §3.2).

Protocol (the 2DQuant training dataloader on pre-generated bicubic LR, with T91 + BSD200 standing in for DF2K):
  * each HR image is modcropped to the scale and downscaled with the project's MATLAB-exact bicubic
    (`bench.data.imresize.imresize`, like the benchmark's `LR_bicubic` images);
  * a patch = a random `patch` x `patch` LR crop (= an HR crop of patch*scale, on the LR grid) of a randomly
    picked image, then h-flip, v-flip and transpose, each with p = 0.5; LR only, float in [0, 1];
  * images smaller than the HR crop are skipped;
  * every 10th image (sorted by relative path, 10th, 20th, ...) is held out as split "val" for model
    selection; split "calib" (and the PatchSampler by default) never uses them.
`calibration_batch` is deterministic in its seed and cached under $BENCH_CACHE/calib/, keyed by the folder
listing (relative paths and sizes), scale, n, patch, seed and split.
"""
from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.data.paths import cache_dir
from bench.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
HOLDOUT_EVERY = 10
SPLITS = ("calib", "val")


# ------------------------------------------------------------------------------------------- listing

@dataclass(frozen=True)
class TrainImage:
    path: Path
    relative: str
    size: tuple[int, int]  # (width, height)


def list_images(train_dir: str | Path) -> list[Path]:
    """Image files under `train_dir` (recursively), sorted by relative path."""
    root = Path(train_dir)
    if not root.is_dir():
        raise DataError(f"training image folder {root} does not exist; pass a folder of HR images (--calib DIR)")
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {root}; put HR training images there")
    return files


def split_images(files: list[Path], split: str) -> list[Path]:
    """The calib/val split: every HOLDOUT_EVERY-th file (1-based) is held out for validation."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    held_out = split == "val"
    chosen = [f for i, f in enumerate(files) if ((i + 1) % HOLDOUT_EVERY == 0) == held_out]
    if not chosen:
        raise DataError(f"the {split!r} split of {files[0].parent} is empty (it holds out every "
                        f"{HOLDOUT_EVERY}th image); add more images")
    return chosen


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}); remove or replace the file") from exc


def usable_images(train_dir: str | Path, split: str, hr_patch: int) -> list[TrainImage]:
    root = Path(train_dir)
    files = split_images(list_images(root), split)
    images = [TrainImage(f, f.relative_to(root).as_posix(), _image_size(f)) for f in files]
    usable = [im for im in images if min(im.size) >= hr_patch]
    if not usable:
        raise DataError(f"no image of the {split!r} split of {root} is at least {hr_patch}x{hr_patch} "
                        f"(the HR size of one patch); use larger images or a smaller --patch")
    return usable


def listing_hash(train_dir: str | Path) -> str:
    root = Path(train_dir)
    digest = hashlib.sha1()
    for f in list_images(root):
        digest.update(f"{f.relative_to(root).as_posix()}:{f.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]


# -------------------------------------------------------------------------------------------- patches

def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}); remove or replace the file") from exc


def make_lr(hr_u8: np.ndarray, scale: int) -> np.ndarray:
    """Modcrop to the scale and downscale with the MATLAB-exact bicubic (uint8 HxWx3)."""
    from bench.data.imresize import imresize
    h, w = hr_u8.shape[0] - hr_u8.shape[0] % scale, hr_u8.shape[1] - hr_u8.shape[1] % scale
    return imresize(np.ascontiguousarray(hr_u8[:h, :w]), 1.0 / scale)


def augment(patch: np.ndarray, rng: random.Random) -> np.ndarray:
    """h-flip, v-flip and transpose, each with p = 0.5 (BasicSR `augment` order)."""
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    if rng.random() < 0.5:
        patch = patch[::-1, :]
    if rng.random() < 0.5:
        patch = patch.transpose(1, 0, 2)
    return patch


def to_tensor(patches: list[np.ndarray]) -> torch.Tensor:
    batch = np.stack([np.ascontiguousarray(p) for p in patches]).astype(np.float32) / 255.0
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


class _LRCache:
    """Downscaled images, computed once per image and kept in memory."""

    def __init__(self, scale: int) -> None:
        self.scale = scale
        self._lr: dict[Path, np.ndarray] = {}

    def get(self, image: TrainImage) -> np.ndarray:
        if image.path not in self._lr:
            self._lr[image.path] = make_lr(load_rgb(image.path), self.scale)
        return self._lr[image.path]


def _draw_patch(images: list[TrainImage], lr_cache: _LRCache, patch: int, rng: random.Random) -> np.ndarray:
    image = images[rng.randrange(len(images))]
    lr = lr_cache.get(image)
    top = rng.randrange(lr.shape[0] - patch + 1)
    left = rng.randrange(lr.shape[1] - patch + 1)
    return augment(lr[top:top + patch, left:left + patch], rng)


def _check_args(scale: int, n: int, patch: int) -> None:
    for name, value, minimum in (("scale", scale, 1), ("n", n, 1), ("patch", patch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise DataError(f"calibration {name}={value!r} must be an integer >= {minimum}")


def sample_patches(train_dir: str | Path, scale: int, n: int, patch: int, seed: int,
                   split: str = "calib") -> torch.Tensor:
    """`n` fresh LR patches (no cache); see module docstring."""
    _check_args(scale, n, patch)
    images = usable_images(train_dir, split, patch * scale)
    rng = random.Random(seed)
    lr_cache = _LRCache(scale)
    return to_tensor([_draw_patch(images, lr_cache, patch, rng) for _ in range(n)])


def calibration_batch(train_dir: str | Path, scale: int, n: int = 32, patch: int = 64, seed: int = 0,
                      split: str = "calib") -> torch.Tensor:
    """(n, 3, patch, patch) float LR patches in [0, 1], deterministic in `seed`, cached (spec §3.1)."""
    if train_dir is None:
        raise DataError("calibration needs a folder of HR training images (--calib DIR); none was given")
    _check_args(scale, n, patch)
    key = hashlib.sha1(f"{listing_hash(train_dir)}|x{scale}|n{n}|p{patch}|s{seed}|{split}".encode()).hexdigest()[:20]
    path = cache_dir() / "calib" / f"{split}_x{scale}_n{n}_p{patch}_s{seed}_{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            pass  # a corrupt cache entry is simply rebuilt
    batch = sample_patches(train_dir, scale, n, patch, seed, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(batch, tmp)
    os.replace(tmp, path)
    return batch


class PatchSampler:
    """Endless source of fresh augmented LR batches (spec §3.2: DQC/Pac fine-tuning; LR only).

    `next_batch()` returns (batch_size, 3, patch, patch) floats in [0, 1]; iterating yields batches forever.
    Downscaled images are kept in memory after their first use.
    """

    def __init__(self, train_dir: str | Path, scale: int, patch: int = 64, seed: int = 0, batch_size: int = 32,
                 split: str = "calib") -> None:
        _check_args(scale, batch_size, patch)
        self.images = usable_images(train_dir, split, patch * scale)
        self.patch, self.batch_size = patch, batch_size
        self._rng = random.Random(seed)
        self._lr = _LRCache(scale)

    def next_batch(self, batch_size: int | None = None) -> torch.Tensor:
        count = batch_size or self.batch_size
        return to_tensor([_draw_patch(self.images, self._lr, self.patch, self._rng) for _ in range(count)])

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_batch()
