"""Where weights live, and downloading the official ones.

Resolution order for `create_model(name, scale, weights=None)`:
  1. an explicit path (`weights=PATH`),
  2. the fetch cache, `$BENCH_CACHE/weights/<card file>` (official weights, put there by `bench models fetch`
     or by hand),
  3. weights shipped with the project, `models/weights/<name>_x<scale>.safetensors` (trained by `bench train`),
  4. otherwise a CheckpointError saying where to put the file.

A matrix's `weights:` value (and `--weights`/`--weights-dir`) is turned into that argument here too
(`resolve_weights_spec`), so the runner knows no model and a new model with shipped weights needs only
`models/` files: its module, its registration, and `models/weights/<name>_x<scale>.safetensors`.

Downloads are one attempt with a short timeout (no retry loop: offline must fail at once), written to a temporary
file in the destination folder, checked against the card's sha256 and only then renamed into place.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.errors import CheckpointError, ConfigError
from models.cards import Card, cards_for, get_card

SHIPPED_DIR = Path(__file__).with_name("weights")
DEFAULT_TIMEOUT_S = 15.0
CHUNK = 1 << 20

EXPLICIT, CACHED, SHIPPED = "explicit", "cached", "shipped"
# `weights:` values of a matrix besides a path: the official checkpoint only, the project's shipped file only,
# or an untrained network; omitted / "default" means `create_model`'s own default.
OFFICIAL, RANDOM, DEFAULT = "official", "random", "default"


# ------------------------------------------------------------------------------------------ locations

def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "sr-ptq-bench"))


def weights_cache_dir(cache: str | Path | None = None) -> Path:
    return (Path(cache) if cache is not None else cache_root()) / "weights"


def shipped_weights_path(name: str, scale: int) -> Path:
    return SHIPPED_DIR / f"{name}_x{scale}.safetensors"


def cached_weights_path(card: Card, cache: str | Path | None = None) -> Path:
    return weights_cache_dir(cache) / card.file


@dataclass(frozen=True)
class WeightsSource:
    path: Path
    origin: str  # "explicit" | "cached" | "shipped"


def find_default_weights(name: str, scale: int, cache: str | Path | None = None) -> WeightsSource | None:
    """The default weights of (name, scale) that exist on disk, in resolution order, or None."""
    card = get_card(name, scale)
    if card is not None and cached_weights_path(card, cache).is_file():
        return WeightsSource(cached_weights_path(card, cache), CACHED)
    if shipped_weights_path(name, scale).is_file():
        return WeightsSource(shipped_weights_path(name, scale), SHIPPED)
    return None


def resolve_weights(name: str, scale: int, weights: str | Path | None = None,
                    cache: str | Path | None = None) -> WeightsSource:
    """The weights file `create_model` loads; raises CheckpointError (naming where to put it) when none."""
    if weights is not None:
        return WeightsSource(Path(weights), EXPLICIT)
    found = find_default_weights(name, scale, cache)
    if found is not None:
        return found
    card = get_card(name, scale)
    if card is None:
        raise CheckpointError(f"model {name} x{scale} has no default weights; pass a weights file "
                              f"(weights=PATH / `weights:` in the matrix) or 'random'")
    raise CheckpointError(f"no weights for {name} x{scale}: run `bench models fetch {name} --scale {scale}` or "
                          f"download {card.url} by hand to {cached_weights_path(card, cache)} "
                          f"(or pass a weights path)")


# ----------------------------------------------------------------------------- matrix `weights:` values

def resolve_weights_spec(name: str, scale: int, spec: str | None, weights_dir: str | Path | None = None,
                         cache: str | Path | None = None) -> str | Path | None:
    """The `weights` argument of `create_model` for a matrix's `weights:` value.

      * None / "default": the official file (the card's name) found anywhere under `weights_dir`, else None
        (`create_model`'s own default: fetch cache, then the project's shipped weights);
      * "official": the official checkpoint only (under `weights_dir` or in the fetch cache), never the
        project's own trained weights: what a paper-reproduction matrix needs;
      * "shipped": the project's own trained weights (`models/weights/<name>_x<scale>.safetensors`) only;
      * "random", or a path (may contain `{scale}`; relative paths are taken under `weights_dir`).
    Raises CheckpointError naming the fix when "official" or "shipped" is missing.
    """
    if spec == RANDOM:
        return RANDOM
    if spec == SHIPPED:
        return _shipped_file(name, scale)
    if spec in (None, DEFAULT, OFFICIAL):
        found = official_file_in(weights_dir, name, scale) if weights_dir is not None else None
        if found is not None or spec != OFFICIAL:
            return found
        return _official_in_cache(name, scale, cache)
    path = Path(str(spec).format(scale=scale))
    if not path.is_absolute() and weights_dir is not None:
        path = Path(weights_dir) / path
    return path


def weights_file_for_spec(name: str, scale: int, spec: str | None, weights_dir: str | Path | None = None,
                          cache: str | Path | None = None) -> Path | None:
    """The file `create_model` will load for a `weights:` value, or None (random init, or nothing on disk)."""
    try:
        resolved = resolve_weights_spec(name, scale, spec, weights_dir, cache)
    except CheckpointError:
        return None
    if isinstance(resolved, str) and resolved == RANDOM:
        return None
    if resolved is None:
        found = find_default_weights(name, scale, cache)
        return found.path if found is not None else None
    return Path(resolved) if Path(resolved).is_file() else None


def official_file_in(weights_dir: str | Path, name: str, scale: int) -> Path | None:
    """The official checkpoint of (name, scale), by its card's file name, anywhere under `weights_dir`."""
    card = get_card(name, scale)
    if card is None or not Path(weights_dir).is_dir():
        return None
    matches = sorted(Path(weights_dir).rglob(card.file))
    return matches[0] if matches else None


def _shipped_file(name: str, scale: int) -> Path:
    path = shipped_weights_path(name, scale)
    if not path.is_file():
        raise CheckpointError(f"the project's {name} x{scale} weights {path} are missing (not trained or not "
                              f"exported yet): train them with `bench train --model {name} --scale {scale} --train DIR "
                              f"--export {path}`, or set `weights: official` / a path in the matrix")
    return path


def _official_in_cache(name: str, scale: int, cache: str | Path | None = None) -> Path:
    card = get_card(name, scale)
    if card is None:
        raise CheckpointError(f"model {name} x{scale} has no official checkpoint card; give `weights:` a path "
                              f"in the matrix")
    path = cached_weights_path(card, cache)
    if not path.is_file():
        raise CheckpointError(f"the official {name} x{scale} checkpoint {card.file} is missing: run `bench models "
                              f"fetch {name} --scale {scale}`, or put {card.file} under --weights-dir DIR")
    return path


def weights_status(name: str, scale: int, cache: str | Path | None = None) -> str:
    """'cached', 'shipped' or 'missing' (what `bench models list` shows)."""
    found = find_default_weights(name, scale, cache)
    return found.origin if found is not None else "missing"


# ------------------------------------------------------------------------------------------ download

def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | Path, *, sha256: str | None = None,
             timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """Download `url` to `dest` atomically; a hash mismatch or a network error leaves `dest` untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = _stream_to(url, fd, dest, timeout)
        if sha256 is not None and digest != sha256.lower():
            raise CheckpointError(f"{dest.name} downloaded from {url} has sha256 {digest}, expected {sha256}; "
                                  f"the download was discarded: check the URL, or put the right file at {dest}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _stream_to(url: str, fd: int, dest: Path, timeout: float) -> str:
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise CheckpointError(f"cannot download {url} ({reason}); if offline, download it elsewhere and "
                                  f"put it at {dest}") from None
    return digest.hexdigest()


@dataclass(frozen=True)
class FetchResult:
    card: Card
    path: Path
    downloaded: bool  # False: a file with the right hash was already there


def fetch_card(card: Card, *, url: str | None = None, cache: str | Path | None = None,
               timeout: float = DEFAULT_TIMEOUT_S) -> FetchResult:
    dest = cached_weights_path(card, cache)
    if dest.is_file() and (card.sha256 is None or sha256_of(dest) == card.sha256):
        return FetchResult(card, dest, downloaded=False)
    download(url or card.url, dest, sha256=card.sha256, timeout=timeout)
    return FetchResult(card, dest, downloaded=True)


def cards_to_fetch(name: str, scale: int | None = None) -> list[Card]:
    """The cards of `name` (one scale or all), one per file (CARN-M's x2/x3/x4 share one file)."""
    from models.registry import get_entry
    entry = get_entry(name)
    cards = cards_for(name)
    if scale is not None:
        if scale not in entry.scales:
            raise ConfigError(f"model {name!r} has no x{scale}; its scales are {', '.join(map(str, entry.scales))}")
        cards = [c for c in cards if c.scale == scale]
    if not cards:
        raise CheckpointError(f"model {name} has no official weights to fetch (no card in models/cards.yaml); "
                              f"pass a weights file instead")
    unique: dict[str, Card] = {}
    for card in cards:
        unique.setdefault(card.file, card)
    return list(unique.values())
