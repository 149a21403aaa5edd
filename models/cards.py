"""Checkpoint cards (`models/cards.yaml`): where the official weights of each (model, scale) come from,
their file name, hash, parameter count and published full-precision PSNR."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from bench.errors import ConfigError

CARDS_FILE = Path(__file__).with_name("cards.yaml")


@dataclass(frozen=True)
class Card:
    model: str
    scale: int
    file: str
    url: str
    sha256: str | None = None
    params: int | None = None
    paper_psnr: dict[str, float] = field(default_factory=dict)
    measured_psnr: dict[str, float] = field(default_factory=dict)
    source: str = ""


def _psnr_table(value) -> dict[str, float]:
    return {str(k): float(v) for k, v in (value or {}).items()}


def _card(entry: dict, index: int) -> Card:
    try:
        return Card(model=str(entry["model"]), scale=int(entry["scale"]), file=str(entry["file"]),
                    url=str(entry["url"]), sha256=entry.get("sha256"), params=entry.get("params"),
                    paper_psnr=_psnr_table(entry.get("paper_psnr")),
                    measured_psnr=_psnr_table(entry.get("measured_psnr")),
                    source=str(entry.get("source", "")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{CARDS_FILE}: entry {index} is malformed ({exc}); each card needs model, scale, "
                          f"file and url") from None


@cache
def load_cards() -> tuple[Card, ...]:
    entries = yaml.safe_load(CARDS_FILE.read_text()) or []
    return tuple(_card(entry, i) for i, entry in enumerate(entries))


def get_card(model: str, scale: int) -> Card | None:
    return next((c for c in load_cards() if c.model == model and c.scale == scale), None)


def cards_for(model: str) -> list[Card]:
    return [c for c in load_cards() if c.model == model]
