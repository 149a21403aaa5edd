"""Bounds of one calibration reused as the first stage of another (2DQuant starts from DOBI's bounds).

A method that starts from another method's result says so with `stage_one() -> (registry name, params)` and
accepts the bounds with `reuse_stage_one(bounds, source)` (methods/twodquant.py). The runner remembers the
bounds of every calibration it makes or loads, keyed by what determines them: the model entry, scale, bits,
scope and the method's `describe()` (name and every parameter, defaults included). The calibration batch and
seed are the same for every calibration of one run (one TaskRunner per run settings), so equal keys mean
equal inputs. Nothing here knows a method by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from bench.runner.cells import Cell
from bench.runner.matrix import canonical_json

Bounds = dict[str, tuple[torch.Tensor, torch.Tensor]]


def bounds_of(qmodel: nn.Module) -> Bounds:
    from bench.quant.surgery import quantizers
    return {name: (q.lower.detach().clone(), q.upper.detach().clone()) for name, q in quantizers(qmodel)}


@dataclass
class BoundsMemo:
    """Calibrated bounds of this process's run, by (model, scale, bits, scope, method description)."""
    _entries: dict[tuple, tuple[Bounds, dict]] = field(default_factory=dict)

    @staticmethod
    def _key(cell: Cell, description: dict) -> tuple:
        return (cell.model, cell.scale, cell.bits.w, cell.bits.a, canonical_json(description))

    def remember(self, cell: Cell, description: dict, qmodel: nn.Module, seconds: float | None) -> None:
        source = {"calib_key": cell.calib_key, "calib_seconds": seconds}
        self._entries[self._key(cell, description)] = (bounds_of(qmodel), source)

    def offer(self, cell: Cell, method) -> None:
        """Hand `method` the bounds of its stage one when this run already calibrated exactly that."""
        stage_one = getattr(method, "stage_one", None)
        if stage_one is None or not hasattr(method, "reuse_stage_one"):
            return
        from methods.registry import create_method
        name, params = stage_one()
        found = self._entries.get(self._key(cell, dict(create_method(name, **params).describe())))
        if found is not None:
            method.reuse_stage_one(*found)
