"""Visual comparison strip (like the 2DQuant paper's Fig. 1): the same crop of HR, bicubic, FP and every
quantized cell of one (model, scale, dataset), side by side, each titled with the tables' method name and two
PSNRs, each saying what it measures: the crop's own (Y channel, computed here from the pixels shown) and the
whole image's (the record's per-image value, as in the tables).

SR outputs come from the run's `images/` folder when the matrix saved them (`save_images: true`);
otherwise they are recomputed from the FP weights and the run's cached calibrated bounds.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from bench.errors import ConfigError
from bench.metrics.psnr_ssim import psnr_y
from bench.runner import stages
from bench.runner.matrix import DatasetSpec, ModelSpec
from bench.runner.records import latest_by_key, read_records
from bench.runner.rundir import RunDir
from bench.runner.tables import display_names


@dataclass(frozen=True)
class Crop:
    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str) -> Crop:
        try:
            x, y, w, h = (int(v) for v in text.split(","))
        except ValueError:
            raise ConfigError(f"bad --crop {text!r}; use x,y,w,h in HR pixels, e.g. --crop 100,60,96,96") from None
        if min(w, h) < 1 or min(x, y) < 0:
            raise ConfigError(f"bad --crop {text!r}: x,y must be >= 0 and w,h >= 1")
        return cls(x, y, w, h)

    def apply(self, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if self.x + self.w > width or self.y + self.h > height:
            raise ConfigError(f"--crop {self.x},{self.y},{self.w},{self.h} exceeds the {width}x{height} HR image; "
                              f"choose a region inside it")
        return image[self.y:self.y + self.h, self.x:self.x + self.w]


@dataclass
class Panel:
    title: str
    image: np.ndarray
    crop_psnr: float | None = None     # PSNR (Y) of the crop shown against HR's crop
    image_psnr: float | None = None    # PSNR of the whole image, from the record

    @property
    def psnr_text(self) -> str:
        """"crop 31.20 dB, image 35.41 dB": each PSNR names what it measures."""
        parts = ([f"crop {self.crop_psnr:.2f} dB"] if self.crop_psnr is not None else []) + \
                ([f"image {self.image_psnr:.2f} dB"] if self.image_psnr is not None else [])
        return ", ".join(parts)

    @property
    def caption(self) -> str:
        return f"{self.title}\n{self.psnr_text}" if self.psnr_text else self.title


TITLE_CHARS = 24   # a panel is 2.2 inches wide: about 24 characters at 8 points
# What the two PSNRs of a panel are, for the strip's title and the report's caption.
PSNR_LEGEND = ("PSNR (dB, Y channel): crop = the pixels shown, against HR's crop (no border shave); "
               "image = the whole image, as in the tables")


@dataclass
class Strip:
    panels: list[Panel]
    model: str
    scale: int
    dataset: str

    @property
    def stem(self) -> str:
        return f"visual_{self.model}_x{self.scale}_{self.dataset}"


def _select(records: list[dict], dataset: str | None, scale: int | None, model: str | None) -> list[dict]:
    chosen = [r for r in records if r.get("status") == "ok"
              and (dataset is None or dataset in (r["dataset"], r.get("dataset_label")))
              and (scale is None or r["scale"] == scale) and (model is None or r["model"] == model)]
    combos = sorted({(r["model"], r["scale"], r.get("dataset_label") or r["dataset"]) for r in chosen})
    if not combos:
        raise ConfigError("no successful cells match --dataset/--scale/--model in this run; "
                          "see `bench table --run R` for what it holds")
    if len(combos) > 1:
        listed = ", ".join(f"{m} x{s} {d}" for m, s, d in combos)
        raise ConfigError(f"the run holds several (model, scale, dataset) combinations ({listed}); "
                          f"choose one with --model, --scale and --dataset")
    return chosen


def _image_pair(dataset, name: str):
    names = [pair.name for pair in dataset]
    if name not in names:
        raise ConfigError(f"no image {name!r} in the dataset; its images are: {', '.join(names)}")
    return dataset[names.index(name)]


def _image_psnr(record: dict, name: str) -> float | None:
    entry = next((p for p in record.get("per_image") or [] if p.get("name") == name), None)
    return None if entry is None else entry.get("psnr")


class _Recomputer:
    """SR outputs of cells whose images were not saved: FP weights + the run's cached bounds."""

    def __init__(self, run: RunDir, device: torch.device) -> None:
        self.run, self.device = run, device
        self._fp: dict[tuple, torch.nn.Module] = {}

    def fp_model(self, record: dict):
        weights = record.get("weights")
        spec = ModelSpec(record["model"], None, None if weights in (None, "default") else weights)
        key = (spec, record["scale"])
        if key not in self._fp:
            self._fp[key] = stages.build_model(spec, record["scale"], None, self.device)
        return self._fp[key]

    def model(self, record: dict):
        fp = self.fp_model(record)
        if record["method"] == "fp":
            return fp
        calib_key = record["key"].rsplit("/", 1)[0]
        path = self.run.bounds_path(calib_key, record["fingerprint"])
        if not path.exists():
            raise ConfigError(f"cell {record['key']} has neither saved SR images nor cached bounds ({path}); "
                              f"rerun its matrix with `save_images: true`")
        return stages.load_bounds(path, fp)[0]


def build_panels(run: RunDir, image: str, crop: Crop, dataset: str | None = None, scale: int | None = None,
                 model: str | None = None, data_root: Path | None = None, device: str = "cpu") -> Strip:
    from bench.data.imresize import imresize
    from bench.inference import upscale

    records = _select(list(latest_by_key(read_records(run.records)).values()), dataset, scale, model)
    first = records[0]
    view = stages.dataset_view(stages.load_data(DatasetSpec(first["dataset"]), first["scale"], data_root),
                               DatasetSpec(first["dataset"], first.get("crop")), first["scale"])
    pair = _image_pair(view, image)
    hr_crop = crop.apply(pair.hr)
    panels = [Panel("HR", hr_crop)]
    names = display_names(records)  # the tables' row names, e.g. "2DQuant (50 DQC steps)"
    recompute = _Recomputer(run, torch.device(device))
    order = sorted(records, key=lambda r: (r["method"] != "bicubic", r["method"] != "fp", -(r.get("w_bits") or 0)))
    for record in order:
        saved = run.path / record["images_dir"] / f"{image}.png" if record.get("images_dir") else None
        if saved is not None and saved.exists():
            from PIL import Image
            sr = np.asarray(Image.open(saved).convert("RGB"))
        elif record["method"] == "bicubic":
            sr = imresize(pair.lr, record["scale"])
        else:
            sr = upscale(recompute.model(record), pair.lr, record["scale"], device)
        bits = "" if record["method"] in ("fp", "bicubic") else f" W{record['w_bits']}A{record['a_bits']}"
        shown = crop.apply(sr)
        panels.append(Panel(f"{names[record['label']]}{bits}", shown, psnr_y(shown, hr_crop, 0),
                            _image_psnr(record, image)))
    return Strip(panels, first["model"], first["scale"], first.get("dataset_label") or first["dataset"])


def save_strip(panels: list[Panel], out_stem: Path, title: str = "") -> list[Path]:
    # Constrained layout keeps the two-line title clear of the panels' three-line captions.
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 * len(panels), 3.0), squeeze=False, layout="constrained")
    for ax, panel in zip(axes[0], panels):
        ax.imshow(panel.image, interpolation="nearest")
        name = textwrap.fill(panel.title, TITLE_CHARS)  # long names wrap instead of running into the next panel
        ax.set_title("\n".join([name] + panel.psnr_text.split(", ")) if panel.psnr_text else name, fontsize=8)
        ax.axis("off")
    if any(p.psnr_text for p in panels):
        legend = "\n".join(textwrap.wrap(PSNR_LEGEND, max(60, 26 * len(panels))))
        title = f"{title}\n{legend}" if title else legend
    if title:
        fig.suptitle(title, fontsize=9)
    fig.get_layout_engine().set(h_pad=0.08)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in ("png", "pdf"):
        path = out_stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=200, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths
