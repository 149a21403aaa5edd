"""Where and with what a result was produced: device, torch version, git commit, timestamp."""
from __future__ import annotations

import datetime as _dt
import functools
import subprocess
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_device(requested: str | None) -> torch.device:
    """`--device`: "cpu", "cuda", "cuda:1" or "auto" (CUDA when available)."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        from bench.errors import ConfigError
        raise ConfigError(f"--device {requested}: CUDA is not available on this machine; use --device cpu")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@functools.lru_cache(maxsize=8)
def device_name(device: torch.device) -> str:
    """The hardware itself: the GPU's name, or the CPU model (so that records from a cluster can be told apart)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "cpu"


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """HEAD of the checkout the code runs from, with "+dirty" when it has local changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def torch_version() -> str:
    return torch.__version__
