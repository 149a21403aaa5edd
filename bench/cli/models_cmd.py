"""`bench models list` and `bench models fetch`.

    bench models list [--cache DIR] [--weights-dir DIR]
    bench models fetch NAME [--scale S] [--url URL] [--cache DIR] [--timeout SECONDS]

`fetch` downloads the official weights named by the model's checkpoint cards into $BENCH_CACHE/weights/
(sha256-checked, atomic); offline it fails at once and says where to put the file by hand.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.threads import add_threads_arg, configure_threads


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list models, fetch their official weights",
                              description="Model zoo: registered architectures and their weights")
    sub = p.add_subparsers(dest="models_command", required=True)
    ls = sub.add_parser("list", help="each (model, scale) with its parameter count and weights status")
    ls.add_argument("--cache", default=None, help="cache folder (default $BENCH_CACHE, ~/.cache/sr-ptq-bench)")
    ls.add_argument("--weights-dir", type=Path, default=None, metavar="DIR",
                    help="folder of checkpoints, as in `bench run`: official files found in it by name are shown")
    add_threads_arg(ls)
    ls.set_defaults(func=run_list)
    fetch = sub.add_parser("fetch", help="download a model's official weights into the cache")
    fetch.add_argument("name", help="model name (see `bench models list`)")
    fetch.add_argument("--scale", type=int, default=None, help="one scale (default: every scale of the model)")
    fetch.add_argument("--url", default=None, help="download from this address instead of the card's (mirror)")
    fetch.add_argument("--cache", default=None, help="cache folder (default $BENCH_CACHE, ~/.cache/sr-ptq-bench)")
    fetch.add_argument("--timeout", type=float, default=None, help="network timeout in seconds (default 15)")
    fetch.set_defaults(func=run_fetch)


def parameter_count(name: str, scale: int) -> int:
    """The card's measured count, else the count of a freshly built model."""
    from models import create_model
    from models.cards import get_card
    card = get_card(name, scale)
    if card is not None and card.params is not None:
        return card.params
    return sum(p.numel() for p in create_model(name, scale, weights="random").parameters())


def found_in_weights_dir(weights_dir: Path, official_file: str) -> Path | None:
    """The official file anywhere under `weights_dir`, as `bench run --weights-dir` finds it."""
    matches = sorted(Path(weights_dir).rglob(official_file))
    return matches[0] if matches else None


def model_rows(cache: str | None = None, weights_dir: Path | None = None) -> list[list[str]]:
    from models import MODEL_REGISTRY
    from models.cards import get_card
    from models.fetch import weights_status

    rows = []
    for name in sorted(MODEL_REGISTRY):
        entry = MODEL_REGISTRY[name]
        for scale in entry.scales:
            card = get_card(name, scale)
            status = weights_status(name, scale, cache)
            found = found_in_weights_dir(weights_dir, card.file) if weights_dir is not None and card else None
            if found is not None:  # what `bench run --weights-dir` would load first
                status = f"in --weights-dir: {found.relative_to(weights_dir)}"
            rows.append([name, f"x{scale}", f"{parameter_count(name, scale):,}", status,
                         card.file if card else "-", entry.description])
    return rows


def run_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from bench.errors import ConfigError
    from models.fetch import SHIPPED_DIR, weights_cache_dir
    configure_threads(args.threads)
    if args.weights_dir is not None and not args.weights_dir.is_dir():
        raise ConfigError(f"--weights-dir {args.weights_dir}: no such folder; give the folder holding the checkpoints")
    print(tabulate(model_rows(args.cache, args.weights_dir), headers=["model", "scale", "params", "weights", "official file",
                                                     "description"], maxcolwidths=[None] * 5 + [50]))
    print(f"\nweights: cached = {weights_cache_dir(args.cache)}/<file>, shipped = {SHIPPED_DIR}/<model>_x<s>"
          f".safetensors; get missing ones with `bench models fetch NAME --scale S`.")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from bench.errors import ConfigError
    from models.fetch import DEFAULT_TIMEOUT_S, cards_to_fetch, fetch_card

    cards = cards_to_fetch(args.name, args.scale)
    if args.url and len(cards) > 1:
        raise ConfigError(f"--url names one file but {args.name} has {len(cards)} "
                          f"({', '.join(c.file for c in cards)}); add --scale S")
    for card in cards:
        result = fetch_card(card, url=args.url, cache=args.cache, timeout=args.timeout or DEFAULT_TIMEOUT_S)
        check = "sha256 verified" if card.sha256 else "no sha256 on the card, not verified"
        verb = "downloaded" if result.downloaded else "already cached"
        print(f"{card.file}: {verb} at {result.path} ({check})")
    return 0
