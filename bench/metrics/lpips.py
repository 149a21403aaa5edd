"""LPIPS (Zhang et al., CVPR 2018) through pyiqa, or None when its weights are not on disk.

LPIPS needs two files that pyiqa would download on first use: the ImageNet backbone (torchvision, into
`<torch hub dir>/checkpoints/`) and the LPIPS linear layers (pyiqa, into `<torch hub dir>/pyiqa/`); the torch hub
dir is $TORCH_HOME/hub (default ~/.cache/torch/hub). Offline, that download would fail or hang, so both files
are looked for first: if one is missing the metric is recorded as missing (None), with one warning per
process naming the files and where to put them.

Protocol: RGB in [0, 1], the same `border` crop as PSNR/SSIM, LPIPS v0.1 (AlexNet by default), lower is better.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from pathlib import Path

import numpy as np
import torch

# pyiqa's file names (pyiqa/archs/lpips_arch.py `default_model_urls`) and torchvision's (`<Net>_Weights.
# IMAGENET1K_V1.url`); written out so that a missing file is found without importing pyiqa (~5 s).
LPIPS_LINEAR_FILES = {"alex": "LPIPS_v0.1_alex-df73285e.pth", "vgg": "LPIPS_v0.1_vgg-a78928a0.pth"}
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
PYIQA_METRIC = {"alex": "lpips", "vgg": "lpips-vgg"}
# pyiqa is an optional extra (1.2 GB of its own dependencies): without it LPIPS is recorded as missing.
PYIQA_MISSING = ("LPIPS is recorded as missing: pyiqa is not installed (it is the optional extra `lpips`: "
                 "pip install -e '.[lpips]', or pip install pyiqa); or pass --no-lpips / set eval.lpips: false")

_warned = False


def hub_dir() -> Path:
    """torch.hub's folder, read when called so that a TORCH_HOME set later is honoured."""
    return Path(torch.hub.get_dir())


def backbone_path(net: str = "alex") -> Path:
    return hub_dir() / "checkpoints" / BACKBONE_FILES[net]


def linear_path(net: str = "alex") -> Path:
    return hub_dir() / "pyiqa" / LPIPS_LINEAR_FILES[net]


def missing_weights(net: str = "alex") -> list[Path]:
    return [p for p in (backbone_path(net), linear_path(net)) if not p.is_file()]


def pyiqa_installed() -> bool:
    return importlib.util.find_spec("pyiqa") is not None


def _warn_once(missing: list[Path], failure: str = "") -> None:
    global _warned
    if _warned:
        return
    _warned = True
    if not pyiqa_installed():
        warnings.warn(PYIQA_MISSING, RuntimeWarning, stacklevel=3)
        return
    names = ", ".join(str(p) for p in missing)
    problem = f"weight file(s) unusable {failure}" if failure else "weight file(s) not found"
    warnings.warn(f"LPIPS is recorded as missing: {problem}: {names}. Copy them there (or set TORCH_HOME to a "
                  f"folder whose hub/ holds checkpoints/ and pyiqa/ with them) to enable LPIPS",
                  RuntimeWarning, stacklevel=3)


def reset_warning() -> None:
    """Let the next missing-weights check warn again (tests)."""
    global _warned
    _warned = False


class LPIPSMetric:
    """`metric(sr_u8, hr_u8, border) -> float | None`; the pyiqa network is built on first use."""

    def __init__(self, net: str = "alex", device: str | torch.device | None = None) -> None:
        if net not in LPIPS_LINEAR_FILES:
            raise ValueError(f"unknown LPIPS backbone {net!r}; use one of {', '.join(LPIPS_LINEAR_FILES)}")
        self.net = net
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._model = None
        self.missing: list[Path] | None = None

    @property
    def available(self) -> bool:
        if self.missing is None:
            self.missing = missing_weights(self.net) if pyiqa_installed() else [Path("pyiqa")]
            if self.missing:
                _warn_once(self.missing)
        return not self.missing

    def _build(self):
        import pyiqa
        # Both files are on disk: the torchvision backbone loads from the hub cache, the linear layers from
        # the explicit path (pyiqa's own default path is fixed when pyiqa is imported). pyiqa prints a
        # "Loading pretrained model" line on stdout, which would corrupt `bench eval --json`.
        with contextlib.redirect_stdout(io.StringIO()):
            return pyiqa.create_metric(PYIQA_METRIC[self.net], device=self.device,
                                       pretrained_model_path=str(linear_path(self.net)))

    @staticmethod
    def _to_tensor(img_u8: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(img_u8).astype(np.float32)).permute(2, 0, 1)[None] / 255.0

    @torch.no_grad()
    def __call__(self, sr_u8: np.ndarray, hr_u8: np.ndarray, border: int = 0) -> float | None:
        if not self.available:
            return None
        if self._model is None:
            try:
                self._model = self._build()
            except Exception as exc:  # a corrupt/mismatching weight file: record LPIPS as missing, never crash
                self.missing = [linear_path(self.net), backbone_path(self.net)]
                _warn_once(self.missing, f"({type(exc).__name__}: {exc})")
                return None
        if border > 0:
            sr_u8, hr_u8 = sr_u8[border:-border, border:-border], hr_u8[border:-border, border:-border]
        score = self._model(self._to_tensor(sr_u8).to(self.device), self._to_tensor(hr_u8).to(self.device))
        return float(score.item())


def lpips_available(net: str = "alex") -> bool:
    return pyiqa_installed() and not missing_weights(net)

