"""Image files: read as uint8 RGB (greyscale expanded), write PNG atomically, read sizes from headers."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

from bench.errors import DataError

IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


def read_rgb(path: str | Path, fix: str = "re-download or regenerate it") -> np.ndarray:
    """uint8 HxWx3. Greyscale (e.g. Set14 bridge.png) is replicated to three channels, as cv2/BasicSR do."""
    from PIL import Image
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist; {fix}")
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except Exception as exc:  # PIL raises OSError/SyntaxError/ValueError... for truncated or corrupt files
        raise DataError(f"image {path} is truncated or corrupt ({type(exc).__name__}: {exc}); {fix}") from exc
    return np.asarray(rgb)


def image_size(path: str | Path, fix: str = "re-download or regenerate it", verify: bool = True) -> tuple[int, int]:
    """(height, width) from the file header. With `verify`, PIL also walks the file's chunks and checksums
    (no pixel decoding), so a truncated file is reported before any model runs."""
    from PIL import Image
    try:
        with Image.open(path) as img:
            width, height = img.size
            if verify:
                img.verify()
    except Exception as exc:
        raise DataError(f"image {path} is truncated or corrupt ({type(exc).__name__}: {exc}); {fix}") from exc
    return height, width


def write_png(path: str | Path, image_u8: np.ndarray) -> None:
    """Write atomically (temp file + rename) so an interrupted run never leaves a truncated PNG."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.png")
    try:
        Image.fromarray(np.ascontiguousarray(image_u8)).save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (hidden/temporary files skipped)."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
