"""Which checkout `bench` runs: a note when the current directory is in another checkout of this project.

Two clones sharing one editable install run the code (and the matrices/, the default results/) of the clone the
install points at, whichever clone the command is typed in. Nothing fails, so without a note the wrong code runs
silently.
"""
from __future__ import annotations

import re
from pathlib import Path

PROJECT_NAME = re.compile(r"""^name\s*=\s*["']sr-ptq-bench["']""", re.MULTILINE)  # in pyproject.toml (no tomllib on 3.10)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding bench/, models/, methods/


def enclosing_checkout(folder: Path) -> Path | None:
    """The root of the git checkout (or worktree) that holds `folder`, None outside any."""
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def is_this_project(checkout: Path) -> bool:
    try:
        return PROJECT_NAME.search((checkout / "pyproject.toml").read_text(encoding="utf-8")) is not None
    except (OSError, UnicodeDecodeError):
        return False


def other_checkout_note(cwd: Path | None = None, package_root: Path = PACKAGE_ROOT) -> str | None:
    """One line when `cwd` (default: the current directory) lies in a checkout of this project other than the one
    `bench` is imported from."""
    try:
        checkout = enclosing_checkout((cwd or Path.cwd()).resolve())
    except OSError:  # the current directory was deleted
        return None
    if checkout is None or checkout == package_root.resolve() or not is_this_project(checkout):
        return None
    return (f"bench: note: running the code in {package_root} (where the installed `bench` points), not the checkout "
            f"you are in, {checkout}; to run that one, `pip install -e {checkout}` or use its own environment")
