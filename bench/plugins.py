"""Load user plugin files (`--plugin my_method.py`): importing the file runs its `@register_*` decorators."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from bench.errors import ConfigError

_LOADED: set[Path] = set()


def load_plugin(path: str | Path) -> None:
    path = Path(path).resolve()
    if path in _LOADED:
        return
    if not path.is_file():
        raise ConfigError(f"plugin file {path} does not exist; pass the path of a .py file to --plugin")
    spec = importlib.util.spec_from_file_location(f"bench_plugin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a plugin's own bug: report it with the file name
        raise ConfigError(f"plugin {path} failed to import: {type(exc).__name__}: {exc}") from exc
    _LOADED.add(path)


def loaded_plugins() -> tuple[str, ...]:
    """The plugin files imported so far (worker processes of a run import the same ones)."""
    return tuple(sorted(str(path) for path in _LOADED))
