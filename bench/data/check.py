"""`bench data check`: which known test sets are under a data root, complete or as a subset, and their LR scales."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.data.cards import DatasetCard, load_cards
from bench.data.io import list_images
from bench.data.lr import cached_lr_root, is_generated
from bench.data.paths import HR_DIR, LR_DIR, cache_dir
from bench.data.sample import SAMPLE_NAME

COMPLETE, SUBSET, MISSING, EMBEDDED = "complete", "subset", "missing", "embedded"
_SCALE_DIR = re.compile(r"^X(\d+)$")


@dataclass
class DatasetStatus:
    name: str
    state: str                    # complete | subset | missing | embedded (sample, written on first use)
    found: int
    expected: int | None
    folder: Path | None
    official_scales: list[int] = field(default_factory=list)
    generated_scales: list[int] = field(default_factory=list)

    @property
    def description(self) -> str:
        if self.state == SUBSET:
            return f"subset ({self.found} of {self.expected})"
        if self.state == EMBEDDED:
            return "embedded (written on first use)"
        return self.state


def _scales_in(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _SCALE_DIR.match(p.name))]
    return sorted(found)


def _lr_scales(name: str, set_dir: Path) -> tuple[list[int], list[int]]:
    official, generated = [], []
    for scale, folder in _scales_in(set_dir / LR_DIR):
        (generated if is_generated(folder) else official).append(scale)
    # The cache folder of *these* HR images (keyed by their content), not of another folder with the same name.
    for scale, _ in _scales_in(cached_lr_root(name, list_images(set_dir / HR_DIR))):
        if scale not in generated and scale not in official:
            generated.append(scale)
    return official, sorted(generated)


def dataset_status(card: DatasetCard, data_root: Path) -> DatasetStatus:
    set_dir = data_root / card.name
    if card.name == SAMPLE_NAME and not (set_dir / HR_DIR).is_dir():
        cached = cache_dir() / SAMPLE_NAME
        set_dir = cached if (cached / HR_DIR).is_dir() else set_dir
    hr_dir = set_dir / HR_DIR
    if not hr_dir.is_dir() or not list_images(hr_dir):
        state = EMBEDDED if card.embedded else MISSING
        return DatasetStatus(card.name, state, 0, card.images, None)
    found = len(list_images(hr_dir))
    state = SUBSET if card.images is not None and found < card.images else COMPLETE
    official, generated = _lr_scales(card.name, set_dir)
    return DatasetStatus(card.name, state, found, card.images, set_dir, official, generated)


def check_data_root(data_root: Path) -> list[DatasetStatus]:
    return [dataset_status(card, data_root) for card in load_cards().values()]
