"""The visual comparison of the HTML report: one crop of HR, bicubic, FP and every method, as PNG data URIs.

The panels are `bench visual`'s (bench.runner.visual.build_panels), titled with the tables' method names and
the PSNR of the crop beside that of the whole image: saved SR images when the run kept them,
otherwise recomputed from the FP weights and the run's cached bounds. Without `--image`, a run that saved its
SR images gets a default crop (the first image, a centred square); a run that did not gets a note saying how
to ask for one, because recomputing every method is a model run the reader did not ask for.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.errors import ConfigError
from bench.runner.rundir import RunDir

DEFAULT_CROP = 96


@dataclass(frozen=True)
class CropPanel:
    title: str             # the tables' method name and bits
    data_uri: str
    psnr: str = ""         # "crop 31.20 dB, image 35.41 dB" (bench.runner.visual.Panel.psnr_text)

    @property
    def caption(self) -> str:
        return f"{self.title}, {self.psnr}" if self.psnr else self.title


@dataclass(frozen=True)
class CropView:
    caption: str
    panels: list[CropPanel]


@dataclass(frozen=True)
class CropRequest:
    image: str | None = None
    crop: str | None = None           # "x,y,w,h" in HR pixels
    dataset: str | None = None
    scale: int | None = None
    model: str | None = None
    data_root: Path | None = None
    device: str = "cpu"
    threads: int | None = None        # --threads, applied only when the panels are built (they may run models)


def png_data_uri(image: np.ndarray) -> str:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _matching(records: list[dict], request: CropRequest) -> list[dict]:
    return [r for r in records if r.get("status") == "ok"
            and (request.dataset is None or request.dataset in (r["dataset"], r.get("dataset_label")))
            and (request.scale is None or r["scale"] == request.scale)
            and (request.model is None or r["model"] == request.model)]


def _first_combo(records: list[dict]) -> tuple[str, int, str]:
    return min((r["model"], r["scale"], r.get("dataset_label") or r["dataset"]) for r in records)


def _default_crop(run: RunDir, cell_records: list[dict]) -> tuple[str, str] | None:
    """(image, crop) when every cell saved its SR images: the first image, a centred square."""
    from PIL import Image
    if not all(r.get("images_dir") or r["method"] == "bicubic" for r in cell_records):
        return None
    saved = next(r for r in cell_records if r.get("images_dir"))
    names = [p["name"] for p in saved.get("per_image") or []]
    path = run.path / saved["images_dir"] / f"{names[0]}.png" if names else None
    if path is None or not path.exists():
        return None
    width, height = Image.open(path).size
    side = min(DEFAULT_CROP, width, height)
    return names[0], f"{(width - side) // 2},{(height - side) // 2},{side},{side}"


def build_crop_view(runs: list[tuple[RunDir, list[dict]]], request: CropRequest) -> CropView | str:
    """The crop panels, or a one-line note saying why there are none and how to get them."""
    for run, records in runs:
        mine = _matching(records, request)
        if not mine:
            continue
        model, scale, dataset = _first_combo(mine)
        cells = [r for r in mine if (r["model"], r["scale"], r.get("dataset_label") or r["dataset"]) == (model, scale, dataset)]
        image, crop_text = request.image, request.crop
        if image is None or crop_text is None:
            default = _default_crop(run, cells)
            if default is None:
                return ("no crop chosen: this run saved no SR images (matrix `save_images: true`); pass "
                        "--image NAME --crop x,y,w,h to recompute the panels from the cached calibrations")
            image, crop_text = image or default[0], crop_text or default[1]
        # Imported only now: bench.runner.visual loads torch and matplotlib, seconds on a busy CPU.
        from bench.runner.visual import PSNR_LEGEND, Crop, build_panels
        from bench.threads import configure_threads
        crop = Crop.parse(crop_text)
        configure_threads(request.threads)
        strip = build_panels(run, image, crop, dataset, scale, model, request.data_root, request.device)
        panels = [CropPanel(p.title, png_data_uri(p.image), p.psnr_text) for p in strip.panels]
        caption = f"{model} x{scale}, {dataset} {image}, crop {crop_text} (x, y, w, h in HR pixels). {PSNR_LEGEND}."
        return CropView(caption, panels)
    raise ConfigError("no successful cells match --dataset/--scale/--model in the given runs; "
                      "see `bench table --run R` for what they hold")
