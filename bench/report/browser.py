"""Open a report in headless Chromium: the rendered DOM, JavaScript problems, and a screenshot.

Used by `bench report --screenshot` and by the tests. Chromium (Debian's `chromium` package) runs with a fresh
profile and its background services off. JavaScript problems are collected two ways: the browser's console
output on stderr (an uncaught error, or a blocked external load, logs a `CONSOLE` line) and the page's own
collector (#report-errors, which also records Content-Security-Policy violations).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.errors import BenchError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0")
INSTALL_HINT = "install Debian's chromium (`apt-get install -y chromium`)"


class BrowserError(BenchError):
    """Chromium is missing or failed to render the page."""


@dataclass(frozen=True)
class PageCheck:
    dom: str
    console: list[str]          # CONSOLE lines the page logged (errors, CSP violations)
    page_errors: str            # text of #report-errors
    status: str                 # text of #report-status ("ready: ..." once the page script ran)
    selftest: str               # text of #report-selftest (only with the #selftest fragment)

    @property
    def ok(self) -> bool:
        return not self.console and not self.page_errors and self.status.startswith("ready")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise BrowserError(f"no headless browser found (looked for {', '.join(CHROMIUM_NAMES)}); {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="bench-chromium-") as profile:
        try:
            return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"chromium did not finish within {timeout:.0f} s on {args[-1]}; open the page by hand "
                               f"to see what hangs") from None


def _element_text(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', dom, flags=re.S)
    return "" if match is None else match.group(1).strip()


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def check_page(html: Path, fragment: str = "", timeout: float = 60) -> PageCheck:
    """Load the page, let its scripts run, and read back the DOM and the console."""
    url = Path(html).resolve().as_uri() + fragment
    done = _run(["--dump-dom", url], timeout)
    if done.returncode != 0 or not done.stdout:
        raise BrowserError(f"chromium exited with status {done.returncode} on {html}: "
                           f"{done.stderr.strip().splitlines()[-1:] or 'no output'}")
    dom = done.stdout
    return PageCheck(dom, console_lines(done.stderr), _element_text(dom, "report-errors"),
                     _element_text(dom, "report-status"), _element_text(dom, "report-selftest"))


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 1600, timeout: float = 60) -> Path:
    """A PNG of the top `width` x `height` pixels of the page."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _run([f"--screenshot={out}", f"--window-size={width},{height}", Path(html).resolve().as_uri()], timeout)
    if done.returncode != 0 or not out.is_file():
        raise BrowserError(f"chromium wrote no screenshot {out} (status {done.returncode}); "
                           f"{done.stderr.strip().splitlines()[-1:] or 'no output'}")
    return out
