"""Which normalisation layer feeds which activation quantizer, found by a forward probe (no architecture names).

A reparameterising method (RepQ-ViT) folds per-channel scales of a LayerNorm's output into the LayerNorm's affine
and into the linears that read that output. The model code between the two may move tokens around (SwinIR rolls
the map and cuts it into windows) but not mix channels, so the quantizer's input is the norm's output up to a
permutation of its rows. The probe runs one FP forward of a small batch, with forward hooks on every norm module
and the calibration capture on every activation quantizer, and matches them by a permutation-invariant fingerprint
of each channel (float64 sum, sum of squares, min and max over all other dimensions). Chosen over torch.fx tracing,
which fails on SwinIR's shape-dependent Python (window partition, padding) and would need per-model tracing rules.

A match only says the values are the same; that nothing else reads the norm's output is checked by the method
(an FP forward after the fold must equal the FP model's).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from bench.quant.calibrate import capture_activations
from bench.quant.quantizer import FakeQuantizer

_RTOL = 1e-5  # float64 sums of the same float32 values in another order agree far closer than this


def channel_fingerprint(x: torch.Tensor) -> torch.Tensor:
    """(4, C) float64: per-channel sum, sum of squares, min and max over every dimension but the last."""
    rows = x.detach().reshape(-1, x.shape[-1]).double()
    return torch.stack([rows.sum(0), rows.square().sum(0), rows.amin(0), rows.amax(0)])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    scale = float(a.abs().max()) or 1.0
    return bool(torch.allclose(a, b, rtol=_RTOL, atol=_RTOL * scale))


@torch.no_grad()
def norm_feeds(qmodel: nn.Module, batch: torch.Tensor,
               norm_types: tuple[type[nn.Module], ...] = (nn.LayerNorm,)) -> dict[str, list[str]]:
    """{norm module path: [names of the activation quantizers whose input is that norm's output]}.

    A quantizer that matches no norm, or more than one (identical outputs), is left out; norms that feed no
    quantizer are absent."""
    norm_prints: dict[str, torch.Tensor] = {}
    quant_prints: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            if name not in norm_prints and isinstance(output, torch.Tensor):
                norm_prints[name] = channel_fingerprint(output)
        return hook

    def observe(name: str, _q: FakeQuantizer, x: torch.Tensor) -> None:
        quant_prints[name] = channel_fingerprint(x)

    handles = [m.register_forward_hook(hook_for(name)) for name, m in qmodel.named_modules()
               if isinstance(m, norm_types)]
    try:
        capture_activations(qmodel, batch, observe)
    finally:
        for handle in handles:
            handle.remove()
    feeds: dict[str, list[str]] = {}
    for qname, qprint in quant_prints.items():
        hits = [nname for nname, nprint in norm_prints.items() if _same(qprint, nprint)]
        if len(hits) == 1:
            feeds.setdefault(hits[0], []).append(qname)
    return feeds
