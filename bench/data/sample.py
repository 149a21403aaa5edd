"""The embedded `sample` set: photos that scikit-image ships, centre-cropped, written in BasicSR layout on
first use, so a fresh clone has something to evaluate offline. A demo set, not a benchmark."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.data.io import write_png
from bench.data.paths import HR_DIR, cache_dir

SAMPLE_NAME = "sample"
SAMPLE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")
# Divisible by 2, 3, 4 (and 8), so every scale uses the whole crop: LR 120/80/60 pixels.
SAMPLE_CROP = 240


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[top:top + size, left:left + size])


def sample_photo(name: str) -> np.ndarray:
    """uint8 HxWx3 crop of a scikit-image photo (greyscale `camera` is written as a single-channel PNG)."""
    import skimage.data
    return centre_crop(getattr(skimage.data, name)(), SAMPLE_CROP)


def _is_complete(set_dir: Path) -> bool:
    return all((set_dir / HR_DIR / f"{name}.png").is_file() for name in SAMPLE_PHOTOS)


def sample_dir(data_root: Path) -> Path:
    """The sample set's folder: `<data_root>/sample` if it is already there, else the cache, where it is written
    on first use (the data root is the user's and is never written)."""
    in_root, in_cache = data_root / SAMPLE_NAME, cache_dir() / SAMPLE_NAME
    for candidate in (in_root, in_cache):
        if _is_complete(candidate):
            return candidate
    target = in_cache
    for name in SAMPLE_PHOTOS:
        write_png(target / HR_DIR / f"{name}.png", sample_photo(name))
    return target


# ------------------------------------------------------------------------------ embedded calibration images

# Other scikit-image photos, disjoint from SAMPLE_PHOTOS, so the demo calibrates on images it never evaluates
# (the calibration-set-is-not-a-test-set rule also holds for the demo). Full images, not crops.
SAMPLE_TRAIN_NAME = "sample-train"
SAMPLE_TRAIN_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina", "coins", "brick", "grass",
                       "gravel", "moon", "page")


def sample_train_dir() -> Path:
    """Folder of the embedded calibration photos (`calibration: {train_dir: sample-train}`), under the cache."""
    import skimage.data
    target = cache_dir() / SAMPLE_TRAIN_NAME
    for name in SAMPLE_TRAIN_PHOTOS:
        path = target / f"{name}.png"
        if not path.is_file():
            write_png(path, np.ascontiguousarray(getattr(skimage.data, name)()))
    return target
