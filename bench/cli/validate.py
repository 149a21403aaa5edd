"""Checks of what a command asks for (model, scale, method, bits, weights), made before any side effect.

`bench eval` generates a missing LR folder and `bench quantize` draws calibration patches into the cache:
a request that cannot succeed (a scale the model lacks, an unknown method, `--bits -4`) must fail before
either, with one line naming the flag the user typed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import CheckpointError, ConfigError


def check_model_scale(name: str, scale: int) -> None:
    """ConfigError unless `name` is registered with `scale`."""
    import models  # noqa: F401  (registers the built-in models)
    from models.registry import get_entry
    entry = get_entry(name)  # an unknown name raises UnknownModelError, a ConfigError
    if scale not in entry.scales:
        raise ConfigError(f"--scale {scale}: model {name} has no x{scale}; its scales are "
                          f"{', '.join(map(str, entry.scales))} (see `bench models list`)")


def bits_from_args(args: argparse.Namespace) -> tuple[int, int]:
    """(weight bits, activation bits) from --bits/--w-bits/--a-bits; an invalid one is named by its flag."""
    from bench.quant.quantizer import MAX_BITS, MIN_BITS
    chosen = {"w": ("--w-bits", args.w_bits) if args.w_bits is not None else ("--bits", args.bits),
              "a": ("--a-bits", args.a_bits) if args.a_bits is not None else ("--bits", args.bits)}
    for flag, value in chosen.values():
        if not MIN_BITS <= value <= MAX_BITS:
            raise ConfigError(f"{flag} {value}: use a bit-width from {MIN_BITS} to {MAX_BITS} "
                              f"(full precision is the model without --method)")
    return chosen["w"][1], chosen["a"][1]


def method_from_args(name: str, items: list[str]):
    """An instance of the registered method `name` with its `--method-param` values (validated)."""
    import methods  # noqa: F401  (registers the built-in methods)
    from methods.registry import get_method_class
    try:
        cls = get_method_class(name)
    except KeyError as exc:
        raise ConfigError(str(exc)) from None
    return cls(**cls.parse_params(items))


def check_scope(scope: str) -> None:
    from bench.quant.scopes import AUTO, list_scopes
    if scope != AUTO and scope not in list_scopes():
        raise ConfigError(f"--scope {scope}: unknown quantization scope; use {AUTO} or one of {', '.join(list_scopes())}")


def resolve_weights_arg(name: str, scale: int, weights: str | None, weights_dir: Path | None) -> str | Path | None:
    """The `weights` argument of `create_model` for `--weights`/`--weights-dir`, as `bench run` resolves them:
    a relative `--weights` path is looked up under `--weights-dir`; without `--weights`, the model's official
    file (its card's file name) found anywhere under `--weights-dir`, else the model's default weights."""
    from bench.runner.matrix import ModelSpec
    from bench.runner.stages import resolve_weights
    if weights_dir is not None and not Path(weights_dir).is_dir():
        raise CheckpointError(f"--weights-dir {weights_dir}: no such folder; give the folder holding the checkpoints")
    resolved = resolve_weights(ModelSpec(name, None, weights), scale, weights_dir)
    if weights is not None and weights != "random" and not Path(resolved).is_file():
        where = f" (looked for {resolved})" if str(resolved) != weights else ""
        raise CheckpointError(f"--weights {weights}: file not found{where}; give the path of a checkpoint")
    return resolved
