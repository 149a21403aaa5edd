"""Where data lives: the data root (test sets in BasicSR layout) and the cache (generated LR, sample set).

Data root: `--data-root` > $BENCH_DATA_ROOT > `<repo>/datasets`. Cache: $BENCH_CACHE > ~/.cache/sr-ptq-bench.
"""
from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HR_DIR = "HR"
LR_DIR = "LR_bicubic"


def default_data_root() -> Path:
    env = os.environ.get("BENCH_DATA_ROOT")
    return Path(env).expanduser() if env else REPO_ROOT / "datasets"


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    return Path(data_root).expanduser() if data_root is not None else default_data_root()


def cache_dir() -> Path:
    env = os.environ.get("BENCH_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sr-ptq-bench"


def lr_folder_name(scale: int) -> str:
    return f"X{scale}"


def _permission_allows_write(folder: Path) -> bool:
    # The permission bits are honoured even for root (who could write anyway): a folder marked r-x, like the
    # shared reference data, is meant to stay untouched.
    st = folder.stat()
    if st.st_uid == os.geteuid():
        return bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid in os.getgroups() or st.st_gid == os.getegid():
        return bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IWOTH)


def is_writable_dir(path: Path) -> bool:
    """True if files may be created under `path` (created if missing): the nearest existing folder's
    permission bits allow it, and a probe file can be written (catches read-only mounts)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not _permission_allows_write(existing):
        return False
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False
