"""From a validated matrix to the concrete list of cells of this run.

Explicit matrices list their models, datasets and methods; missing weights or data are then errors (raised
by the executor's preflight, naming the file and the fix). Matrices that say `all` (full.yaml) are expanded
from the registries here, and an entry whose weights or data are not available is skipped with a note.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.runner.cells import Cell, expand_cells, merge_block_cells, select_cells
from bench.runner.matrix import (
    ALL,
    BlockSpec,
    DatasetSpec,
    MatrixSpec,
    MethodSpec,
    ModelSpec,
    known_datasets,
)


@dataclass
class Plan:
    cells: list[Cell]
    skipped: list[str] = field(default_factory=list)  # "model x4: <why>" for unavailable registry entries


def _model_scales(spec: ModelSpec, block: BlockSpec) -> tuple[int, ...]:
    from models.registry import get_entry
    registered = get_entry(spec.name).scales
    if spec.scales is not None:
        return spec.scales
    if isinstance(block.default_scales, tuple):
        return tuple(s for s in block.default_scales if s in registered)
    return registered


def _models(block: BlockSpec, matrix: MatrixSpec) -> list[ModelSpec]:
    if block.models != ALL:
        return list(block.models)
    from models.registry import list_models
    weights = None if matrix.all_models_weights == "default" else matrix.all_models_weights
    return [ModelSpec(name, None, weights) for name in list_models()]


def _datasets(block: BlockSpec) -> list[DatasetSpec]:
    if block.datasets != ALL:
        return list(block.datasets)
    return [DatasetSpec(name) for name in known_datasets()]


def _methods(block: BlockSpec) -> list[MethodSpec]:
    if block.methods != ALL:
        return list(block.methods)
    from methods.registry import list_methods
    return [MethodSpec(name, name) for name in list_methods()]


def matrix_cells(matrix: MatrixSpec) -> list[Cell]:
    """Every cell the matrix names, block after block, before `--only` and before any availability check."""
    blocks = []
    for block in matrix.cell_blocks():
        models = [(m, s) for m in _models(block, matrix) for s in _model_scales(m, block)]
        blocks.append(expand_cells(models, _datasets(block), _methods(block), block.baselines, block.bits,
                                   block.peers))
    return merge_block_cells(blocks, matrix.path)


def make_plan(matrix: MatrixSpec, only: dict[str, set[str]], data_root: Path | None,
              weights_dir: Path | None, load_models: bool = True) -> Plan:
    """`load_models=False` (`bench run --plan`) judges the availability of `all` entries by their files alone
    (weights file present, HR images present) instead of building each model and loading each test set."""
    cells = select_cells(matrix_cells(matrix), only)
    skipped: list[str] = []
    # Availability is checked only for what `--only` kept: slicing a huge matrix stays quick.
    if any(block.models == ALL for block in matrix.cell_blocks()):
        available = set(_available_models(list(dict.fromkeys((c.model, c.scale) for c in cells)), weights_dir,
                                          skipped, load_models))
        cells = [c for c in cells if (c.model, c.scale) in available]
    if any(block.datasets == ALL for block in matrix.cell_blocks()):
        cells = _with_available_data(cells, data_root, skipped, load_models)
    return Plan(cells, skipped)


def _available_models(models: list[tuple[ModelSpec, int]], weights_dir: Path | None,
                      skipped: list[str], load: bool = True) -> list[tuple[ModelSpec, int]]:
    import torch

    from bench.runner.stages import build_model
    available = []
    for spec, scale in models:
        try:
            if load:
                build_model(spec, scale, weights_dir, torch.device("cpu"))
            else:
                _check_weights_file(spec, scale, weights_dir)
        except BenchError as exc:
            skipped.append(f"{spec.name} x{scale}: {exc}")
            continue
        available.append((spec, scale))
    return available


def _check_weights_file(spec: ModelSpec, scale: int, weights_dir: Path | None) -> None:
    """The weights file a matrix entry resolves to exists (CheckpointError naming the fix otherwise)."""
    from bench.errors import CheckpointError
    from bench.runner.stages import resolve_weights
    from models.fetch import resolve_weights as default_weights
    weights = resolve_weights(spec, scale, weights_dir)
    if isinstance(weights, str) and weights == "random":
        return
    if weights is None:
        default_weights(spec.name, scale)
    elif not Path(weights).is_file():
        raise CheckpointError(f"weights file {weights} does not exist; fix `weights:` in the matrix or --weights-dir")


def _check_hr_images(name: str, data_root: Path | None) -> None:
    from bench.data.dataset import dataset_dir
    from bench.data.io import list_images
    from bench.data.paths import HR_DIR, resolve_data_root
    folder = dataset_dir(name, resolve_data_root(data_root)) / HR_DIR
    if not list_images(folder):
        from bench.errors import DataError
        raise DataError(f"no images in {folder}; put the HR images (.png) there")


def _with_available_data(cells: list[Cell], data_root: Path | None, skipped: list[str],
                         load: bool = True) -> list[Cell]:
    from bench.runner.stages import load_data
    verdict: dict[tuple[str, int], bool] = {}
    for cell in cells:
        key = (cell.dataset.name, cell.scale)
        if key not in verdict:
            try:
                if load:
                    load_data(cell.dataset, cell.scale, data_root)
                else:
                    _check_hr_images(cell.dataset.name, data_root)
                verdict[key] = True
            except BenchError as exc:
                verdict[key] = False
                skipped.append(f"{cell.dataset.name} x{cell.scale}: {exc}")
    return [cell for cell in cells if verdict[(cell.dataset.name, cell.scale)]]
