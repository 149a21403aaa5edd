"""Cells of a matrix: one (model, scale, method+params, w/a bits, dataset) evaluation each.

A cell's `key` names it readably and is what resume matches on; its `fingerprint` hashes everything else
that changes its result (weights, scope, calibration and latency settings), so that editing those settings
recomputes the cell instead of silently reusing a stale record.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.errors import ConfigError
from bench.runner.matrix import Bits, DatasetSpec, MatrixSpec, MethodSpec, ModelSpec

FP, BICUBIC = "fp", "bicubic"
FP_BITS = 32


@dataclass(frozen=True)
class Cell:
    model: ModelSpec
    scale: int
    method: MethodSpec          # the baselines use MethodSpec("fp"|"bicubic", ...)
    bits: Bits | None           # None for bicubic, Bits(32, 32) for FP
    dataset: DatasetSpec

    @property
    def is_baseline(self) -> bool:
        return self.method.name in (FP, BICUBIC)

    @property
    def is_peer(self) -> bool:
        """A runtime's own PTQ on the FP model (bench.export.peers): calibrated and run outside bench.quant."""
        return self.method.peer

    @property
    def method_id(self) -> str:
        """Label plus params, unless the matrix gives none (then just the label)."""
        return self.method.label + self.method.params_json

    @property
    def bits_label(self) -> str:
        return "-" if self.bits is None else ("FP" if self.bits.w == FP_BITS else self.bits.label)

    @property
    def key(self) -> str:
        return "/".join([self.model.name, f"x{self.scale}", self.method_id, self.bits_label, self.dataset.label])

    @property
    def calib_key(self) -> str:
        """Cells sharing this key share one calibration (bounds do not depend on the test set)."""
        return "/".join([self.model.name, f"x{self.scale}", self.method_id, self.bits_label])

    def fingerprint(self, matrix: MatrixSpec, weights_id: str | None = None) -> str:
        """Hash of what changes this cell's result besides its key: the matrix's settings and the identity
        of the weights file (`weights_id`, a content digest), so that retrained weights are re-evaluated.
        The calibration *folder* is not part of it (a command-line path): to calibrate on other images,
        use --force or another --out."""
        settings: dict[str, Any] = {"lpips": matrix.eval.lpips}
        if matrix.eval.runtimes and not self.is_baseline:  # only when set: older runs keep their fingerprints
            settings["runtimes"] = list(matrix.eval.runtimes)
        if self.method.name != BICUBIC:
            settings.update(weights=self.model.weights, weights_id=weights_id, scope=self.model.scope,
                            latency=[matrix.latency.runs, matrix.latency.lr_size], cost=matrix.cost.lr_size)
        if not self.is_baseline:
            c = matrix.calibration
            settings["calibration"] = [c.n, c.patch, c.seed, c.val, c.train_dir]
        blob = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


FP_METHOD = MethodSpec(FP, FP)
BICUBIC_METHOD = MethodSpec(BICUBIC, BICUBIC)


def peer_method(name: str) -> MethodSpec:
    return MethodSpec(name, name, peer=True)


def expand_cells(models: Iterable[tuple[ModelSpec, int]], datasets: Iterable[DatasetSpec],
                 methods: Iterable[MethodSpec], baselines: Iterable[str],
                 default_bits: tuple[Bits, ...], peers: Iterable[str] = ()) -> list[Cell]:
    """All cells, grouped so that one FP model and one calibration serve consecutive cells; the peers (the
    runtimes' own PTQ) after the methods."""
    datasets, baselines = list(datasets), list(baselines)
    methods = list(methods) + [peer_method(name) for name in peers]
    cells = []
    for model, scale in models:
        for baseline in baselines:
            method, bits = (FP_METHOD, Bits(FP_BITS, FP_BITS)) if baseline == FP else (BICUBIC_METHOD, None)
            cells += [Cell(model, scale, method, bits, d) for d in datasets]
        for method in methods:
            for bits in method.bits or default_bits:
                cells += [Cell(model, scale, method, bits, d) for d in datasets]
    return cells


def merge_block_cells(blocks: Iterable[list[Cell]], matrix_path: object = "the matrix") -> list[Cell]:
    """The cells of several blocks, in order, each key once. A model or method spelled in several entries
    (other scales, other per-method bits) becomes one spec, so that one FP model and one calibration still
    serve all its cells. A model at one scale with two weights or scopes is a ConfigError: cell keys, tables
    and the calibration cache name the model and scale only, so its cells could not be told apart."""
    models: dict[tuple, ModelSpec] = {}
    methods: dict[tuple, MethodSpec] = {}
    settings: dict[tuple[str, int], tuple[Cell, ModelSpec]] = {}
    merged: dict[str, Cell] = {}
    for cells in blocks:
        for cell in cells:
            model = models.setdefault((cell.model.name, cell.model.weights, cell.model.scope), cell.model)
            method = methods.setdefault((cell.method.name, cell.method.label, cell.method.params_json), cell.method)
            cell = Cell(model, cell.scale, method, cell.bits, cell.dataset)
            first, spec = settings.setdefault((model.name, cell.scale), (cell, model))
            if spec is not model:
                raise ConfigError(
                    f"{matrix_path}: two entries give {model.name} x{cell.scale} other settings (cell {first.key}: "
                    f"weights {spec.weights or 'default'}, scope {spec.scope} vs cell {cell.key}: weights "
                    f"{model.weights or 'default'}, scope {model.scope}); a model has one weights and one scope per "
                    f"scale in a matrix: compare weights or scopes in two matrices (or run folders)")
            merged.setdefault(cell.key, cell)
    return list(merged.values())


_FILTER_KEYS = ("model", "scale", "method", "label", "bits", "w_bits", "a_bits", "dataset")


def cell_field(cell: Cell, key: str) -> set[str]:
    """String forms of a cell's field under which `--only key=value` may select it."""
    if key == "model":
        return {cell.model.name}
    if key == "scale":
        return {str(cell.scale), f"x{cell.scale}"}
    if key in ("method", "label"):
        return {cell.method.name, cell.method.label}
    if key == "bits":
        if cell.bits is None:
            return {"-"}
        forms = {cell.bits_label, cell.bits_label.lower()}
        return forms | ({str(cell.bits.w)} if cell.bits.w == cell.bits.a else set())
    if key == "w_bits":
        return {str(cell.bits.w)} if cell.bits else set()
    if key == "a_bits":
        return {str(cell.bits.a)} if cell.bits else set()
    if key == "dataset":
        return {cell.dataset.name, cell.dataset.label}
    raise KeyError(key)


def parse_only(filters: list[str]) -> dict[str, set[str]]:
    """`--only key=value[,value...]` arguments -> {key: accepted values}."""
    parsed: dict[str, set[str]] = {}
    for item in filters or []:
        key, sep, value = item.partition("=")
        if not sep or key not in _FILTER_KEYS or not value:
            raise ConfigError(f"bad --only {item!r}; use key=value with key one of {', '.join(_FILTER_KEYS)} "
                              f"(e.g. --only method=minmax --only dataset=Set5,Set14)")
        parsed.setdefault(key, set()).update(v.strip() for v in value.split(","))
    return parsed


def select_cells(cells: list[Cell], only: dict[str, set[str]]) -> list[Cell]:
    """Cells matching every filter (case-insensitive). Bit filters do not drop the FP/bicubic rows of the
    selected models: they are the reference every quantized row is read against."""
    def matches(cell: Cell, key: str, values: set[str]) -> bool:
        have = {v.lower() for v in cell_field(cell, key)}
        return bool(have & {v.lower() for v in values})

    def keep(cell: Cell) -> bool:
        for key, values in only.items():
            if cell.is_baseline and key in ("bits", "w_bits", "a_bits"):
                continue
            if not matches(cell, key, values):
                return False
        return True
    return [cell for cell in cells if keep(cell)]
