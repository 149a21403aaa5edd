"""User-facing errors. Every one names the file or value at fault and the fix; the CLI prints it on one line."""
from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class BenchError(Exception):
    """Base class for errors the CLI reports as one line, without a traceback."""


class DataError(BenchError):
    """Missing/corrupt image, missing LR folder, HR/LR size mismatch, unknown dataset."""


class CheckpointError(BenchError):
    """Wrong, missing or mismatching checkpoint."""


class ConfigError(BenchError):
    """Invalid YAML, unknown model/method/dataset, bad bit-width."""


def with_prefix(exc: E, prefix: str) -> E:
    """A copy of `exc` whose message starts with `prefix: `, of the same type and with the same attributes.

    `type(exc)(message)` would call the subclass's own `__init__`, which may take other arguments
    (CheckpointMismatchError takes the key lists): the copy is made without calling it.
    """
    copy = type(exc).__new__(type(exc))
    copy.__dict__.update(getattr(exc, "__dict__", {}))
    copy.args = (f"{prefix}: {exc}",)
    return copy
