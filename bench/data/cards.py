"""Dataset cards: the known test sets, their full size, citation and LR file naming (datasets/cards.yaml)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from bench.data.paths import REPO_ROOT
from bench.errors import ConfigError

CARDS_FILE = REPO_ROOT / "datasets" / "cards.yaml"
DEFAULT_LR_NAMES = ("{name}x{scale}.png",)


@dataclass(frozen=True)
class DatasetCard:
    name: str
    images: int | None          # size of the full set (None: unknown, e.g. a user's own folder)
    citation: str = ""
    names: str = ""
    lr_names: tuple[str, ...] = DEFAULT_LR_NAMES
    embedded: bool = False      # materialised by the project itself (the `sample` set)

    def lr_candidates(self, stem: str, scale: int) -> list[str]:
        return [pattern.format(name=stem, scale=scale) for pattern in self.lr_names]


@lru_cache(maxsize=None)
def load_cards(path: Path = CARDS_FILE) -> dict[str, DatasetCard]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read dataset cards {path} ({exc}); restore it from the repository") from exc
    cards = {}
    for name, entry in (raw or {}).get("datasets", {}).items():
        cards[name] = DatasetCard(name=name, images=entry.get("images"), citation=entry.get("citation", ""),
                                  names=entry.get("names", ""),
                                  lr_names=tuple(entry.get("lr_names", DEFAULT_LR_NAMES)),
                                  embedded=bool(entry.get("embedded", False)))
    return cards


def known_datasets() -> list[str]:
    return list(load_cards())


def card_for(name: str) -> DatasetCard | None:
    return load_cards().get(name)


def custom_card(name: str) -> DatasetCard:
    """A user's own folder in BasicSR layout: no expected size, default LR naming."""
    return DatasetCard(name=name, images=None)
