"""Benchmark matrices: YAML files in `matrices/`, parsed and validated into a `MatrixSpec`.

Schema (every key but `models`, `datasets` and `methods`/`baselines` optional):

    name: demo                      # run name (default: file stem)
    description: text
    models:                         # names, or mappings; or the string "all" (every registered model)
      - swinir-light
      - {name: imdn, scales: [2], weights: "imdn/IMDN_x{scale}.pth", scope: auto}
    scales: [2, 4]                  # default scales of the models; "all" = each model's registered scales
    datasets:                       # names, or {name, crop, max_images}; or "all"
      - Set5
      - {name: Set14, crop: 48, max_images: 3}   # centre crop of 48x48 LR pixels, first 3 images
    bits: [4, 3, 2]                 # W=A bits; or "w4a8" / {w: 4, a: 8}; or mixed precision within uniform
                                    # W4A4's size and BOPs: {mixed: {like: 4, candidates: [2, 3, 4, 6, 8],
                                    # criterion: mse|hawq-v2, context: context|alone}} or "mixed:4" (bench.mixed)
    methods:                        # names, or {name, label, params, bits}; or "all" (defaults)
      - minmax
      - {name: 2dquant, label: 2dquant-tiny, params: {iters: 20}}
    baselines: [fp, bicubic]
    peers: [ort-minmax, nncf]       # the runtimes' own PTQ on the same FP model and calibration batch, as rows
                                    # (bench.export.peers; W8A8, or W7A8 = their 7-bit-weight variants)
    calibration: {n: 32, patch: 64, seed: 0, train_dir: null, val: false}
                                    # train_dir: HR training images (default: `bench run --calib DIR`);
                                    # val: also give methods held-out patches (e.g. 2dquant select=val)
    eval: {lpips: false, runtimes: []}  # runtimes: [openvino, onnxruntime]: also the PSNR/SSIM of each quantized
                                    # cell's ONNX QDQ export run by that runtime's int8 kernels
    latency: {runs: 3, lr_size: 128}  # runs: 0 disables the measurement; runtime: torch | onnxruntime | openvino
                                    # (or a list of both): FP32 vs int8 (and BF16 in OpenVINO) in that runtime
    cost: {lr_size: 128}
    save_images: false              # write every cell's SR outputs as PNG (for `bench visual`)
    seed: 0
    all_models_weights: official    # with `models: all`: which weights each model uses (official | default)
    blocks:                         # optional: the cells are the union of these blocks' cells
      - {methods: [minmax, dobi]}   # a block takes models, scales, datasets, bits, methods, baselines
      - {models: [{name: imdn, scales: [2]}], datasets: [Set5], bits: [2], methods: [minmax], baselines: []}

`weights`: omitted/"default" = the official file under `--weights-dir` if there, else the model's default
weights (`models.create_model(weights=None)`: fetch cache, then the project's shipped weights); "official" =
the official checkpoint only (never the project's trained weights); "shipped" = the project's trained weights
only (models/weights/); "random" = random init; otherwise a path
(may contain `{scale}`), relative to `--weights-dir` if given.
Every mistake raises a one-line ConfigError naming the file, the entry and the fix.

Blocks: a table whose cells are not one product (W2A2 rows only at x2 on Set5, other datasets for one model) is
one matrix with several `blocks`. Each block is a partial matrix: the keys it leaves out (models, scales,
datasets, bits, methods, baselines) come from the top level, and the run's cells are the union of the blocks'
cells, in block order (a cell two blocks both give is run once). Settings (calibration, eval, latency, cost,
seed) are the matrix's, for every block. A method label means one method with one set of params in the whole
matrix (tables show one row per label and bits), so a variant with other params needs its own label.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import ConfigError
from bench.quant.quantizer import MAX_BITS, MIN_BITS
from bench.quant.scopes import AUTO, list_scopes

REPO_ROOT = Path(__file__).resolve().parents[2]
MATRIX_DIRS = (REPO_ROOT / "matrices", Path.cwd() / "matrices")
BASELINES = ("fp", "bicubic")
ALL = "all"
# Names the data layer knows; used only when bench.data exposes no list of its own.
FALLBACK_DATASETS = ("Set5", "Set14", "B100", "Urban100", "Manga109", "sample")

_TOP_KEYS = {"name", "description", "models", "scales", "datasets", "bits", "methods", "baselines", "peers",
             "calibration", "eval", "latency", "cost", "save_images", "seed", "all_models_weights", "blocks"}
# What a block may set; everything else is a setting of the whole matrix.
_BLOCK_KEYS = {"name", "models", "scales", "datasets", "bits", "methods", "baselines", "peers"}
# The integer runtimes a matrix can evaluate and time its quantized cells in (bench.export)
RUNTIMES = ("onnxruntime", "openvino")
# `models: all` takes official checkpoints only unless asked: the project's CPU-trained (shipped) weights are not
# mixed with official ones in one table by accident.
ALL_MODELS_WEIGHTS = ("official", "default")
_MODEL_KEYS = {"name", "scales", "weights", "scope"}
_DATASET_KEYS = {"name", "crop", "max_images"}
_METHOD_KEYS = {"name", "label", "params", "bits"}


@dataclass(frozen=True)
class Bits:
    w: int
    a: int
    mixed: Any = None  # bench.mixed.spec.MixedSpec: per-layer bits within uniform W{w}A{a}'s size and BOPs

    @property
    def label(self) -> str:
        return self.mixed.tag if self.mixed is not None else f"W{self.w}A{self.a}"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    scales: tuple[int, ...] | None  # None: the model's registered scales
    weights: str | None = None      # None = default weights; "random"; or a path template
    scope: str = AUTO


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    crop: int | None = None         # centre crop, in LR pixels
    max_images: int | None = None   # first N images

    @property
    def label(self) -> str:
        """Cell-key name: the plain dataset name unless the matrix shrinks it."""
        extras = [f"crop{self.crop}" if self.crop else "", f"n{self.max_images}" if self.max_images else ""]
        extras = [e for e in extras if e]
        return f"{self.name}[{','.join(extras)}]" if extras else self.name


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    params_json: str = ""                 # canonical JSON of the matrix's params ("" = method defaults)
    bits: tuple[Bits, ...] | None = None  # None: the matrix's `bits`
    peer: bool = False                    # a runtime's own PTQ (bench.export.peers), not a registered method

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json) if self.params_json else {}


def canonical_json(params: dict[str, Any]) -> str:
    """Hashable, order-independent form of method params (also their spelling in cell keys)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str) if params else ""


@dataclass(frozen=True)
class CalibrationSpec:
    n: int = 32
    patch: int = 64
    seed: int = 0
    train_dir: str | None = None
    val: bool = False


@dataclass(frozen=True)
class EvalSpec:
    lpips: bool = False
    runtimes: tuple[str, ...] = ()  # also evaluate each quantized cell's int8 export in these runtimes (RUNTIMES)


@dataclass(frozen=True)
class LatencySpec:
    runs: int = 3
    lr_size: int = 128
    runtime: str = "torch"  # "onnxruntime" / "openvino": also FP32 vs int8 QDQ in that runtime (bench.export), measured
    runtimes: tuple[str, ...] = ()  # every runtime timed (`runtime: [openvino, onnxruntime]`); () = (runtime,)

    @property
    def timed_runtimes(self) -> tuple[str, ...]:
        """The integer runtimes that time each calibration, in the matrix's order."""
        return tuple(r for r in (self.runtimes or (self.runtime,)) if r in RUNTIMES)


@dataclass(frozen=True)
class CostSpec:
    lr_size: int = 128


@dataclass(frozen=True)
class BlockSpec:
    """One product of cells: models x scales x datasets x (methods x bits, and the baselines)."""
    name: str
    models: tuple[ModelSpec, ...] | str = ()      # or ALL
    datasets: tuple[DatasetSpec, ...] | str = ()  # or ALL
    bits: tuple[Bits, ...] = (Bits(4, 4),)
    methods: tuple[MethodSpec, ...] | str = ()    # or ALL
    baselines: tuple[str, ...] = ()
    default_scales: tuple[int, ...] | str | None = None
    peers: tuple[str, ...] = ()                   # bench.export.peers names


@dataclass
class MatrixSpec:
    name: str
    path: Path
    description: str = ""
    # The cell keys below are the top level's; in a matrix with `blocks`, the first block's (cell_blocks() has all)
    models: tuple[ModelSpec, ...] | str = ()      # or ALL
    datasets: tuple[DatasetSpec, ...] | str = ()  # or ALL
    bits: tuple[Bits, ...] = (Bits(4, 4),)
    methods: tuple[MethodSpec, ...] | str = ()    # or ALL
    baselines: tuple[str, ...] = ()
    default_scales: tuple[int, ...] | str | None = None
    peers: tuple[str, ...] = ()
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    latency: LatencySpec = field(default_factory=LatencySpec)
    cost: CostSpec = field(default_factory=CostSpec)
    save_images: bool = False
    seed: int = 0
    all_models_weights: str = "official"
    blocks: tuple[BlockSpec, ...] = ()            # empty: the top-level keys are the one block

    def cell_blocks(self) -> tuple[BlockSpec, ...]:
        """The blocks whose cells make up the run (the top level alone when the matrix has no `blocks`)."""
        if self.blocks:
            return self.blocks
        return (BlockSpec(self.name, self.models, self.datasets, self.bits, self.methods, self.baselines,
                          self.default_scales, self.peers),)

    @property
    def expands_registries(self) -> bool:
        """True for matrices such as full.yaml, whose cells depend on what is registered and available."""
        return any(ALL in (b.models, b.datasets, b.methods, b.default_scales) for b in self.cell_blocks())


# ------------------------------------------------------------------------------------------------ loading

def _all_models_weights(value, check) -> str:
    if value not in ALL_MODELS_WEIGHTS:
        check.fail(f"`all_models_weights` must be one of {', '.join(ALL_MODELS_WEIGHTS)} (official: only official "
                   f"checkpoints; default: also the project's shipped weights), got {value!r}")
    return value


def resolve_matrix_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a file in the repository's `matrices/` folder."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise ConfigError(f"matrix file {candidate} does not exist; give an existing YAML file or a name "
                              f"from matrices/ ({', '.join(available_matrices())})")
        return candidate
    for folder in MATRIX_DIRS:
        for suffix in (".yaml", ".yml"):
            path = folder / f"{name_or_path}{suffix}"
            if path.is_file():
                return path
    raise ConfigError(f"unknown matrix {str(name_or_path)!r}; use one of {', '.join(available_matrices())} "
                      f"or the path of a YAML file")


def available_matrices() -> list[str]:
    """Matrix names: file stems in `matrices/`, and `sub/stem` below it (reference/imdn-w4a4)."""
    names = set()
    for folder in MATRIX_DIRS:
        if folder.is_dir():
            names.update(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml"))
    return sorted(names)


def load_matrix(name_or_path: str | Path) -> MatrixSpec:
    path = resolve_matrix_path(name_or_path)
    raw = _read_yaml(path)
    return parse_matrix(raw, path)


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error_message(path, exc)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a matrix must be a YAML mapping with keys models, datasets, methods, ...")
    return raw


# Parser contexts that start at an opening bracket or quote: an unclosed one is reported by PyYAML where it
# noticed (often the next line), so the message names the line of the opener instead.
_UNCLOSED = {"while parsing a flow sequence": "the list opened with `[`",
             "while parsing a flow mapping": "the mapping opened with `{`",
             "while scanning a quoted scalar": "the quoted string"}


def yaml_error_message(path: Path, exc: yaml.YAMLError) -> str:
    """One line naming the line of the actual fault: the opener of an unclosed bracket or quote, else the
    line where the parser stopped."""
    problem_mark, context_mark = getattr(exc, "problem_mark", None), getattr(exc, "context_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    opener = _UNCLOSED.get(getattr(exc, "context", None) or "")
    if opener and context_mark is not None and problem_mark is not None and context_mark.line != problem_mark.line:
        line = context_mark.line + 1
        return (f"{path}:{line}: invalid YAML: {opener} on line {line} is not closed (the parser stopped on line "
                f"{problem_mark.line + 1}: {problem}); close it on line {line}")
    where = f"{path}:{problem_mark.line + 1}" if problem_mark is not None else str(path)
    return f"{where}: invalid YAML ({problem}); fix the syntax at that line"


class _Checker:
    """Validation helpers that prefix every message with the file name."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, message: str) -> None:
        raise ConfigError(f"{self.path}: {message}")

    def keys(self, mapping: dict, allowed: set[str], where: str) -> None:
        for key in mapping:
            if key not in allowed:
                self.fail(f"unknown key {key!r} in {where}; allowed keys: {', '.join(sorted(allowed))}")

    def mapping(self, value: Any, where: str) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(f"`{where}` must be a mapping, got {value!r}")
        return value

    def int_value(self, value: Any, where: str, minimum: int = 0, allow_none: bool = False) -> int | None:
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(f"`{where}` must be an integer >= {minimum}, got {value!r}")
        return value

    def bool_value(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.fail(f"`{where}` must be true or false, got {value!r}")
        return value

    def list_of(self, value: Any, where: str) -> list:
        if isinstance(value, (str, int, dict)):
            return [value]
        if not isinstance(value, list):
            self.fail(f"`{where}` must be a list, got {value!r}")
        return value


def parse_bits(value: Any, check: _Checker, where: str = "bits") -> Bits:
    fix = f"use integers {MIN_BITS}-{MAX_BITS} (W=A), e.g. [4, 3, 2], or 'w4a8' / {{w: 4, a: 8}}"
    if isinstance(value, bool):
        check.fail(f"bad bits {value!r} in `{where}`; {fix}")
    mixed = _parse_mixed(value, check, where)
    if mixed is not None:
        return Bits(mixed.like, mixed.like, mixed)
    if isinstance(value, int):
        w = a = value
    elif isinstance(value, str) and re.fullmatch(r"[wW](\d+)[aA](\d+)", value.strip()):
        w, a = (int(x) for x in re.fullmatch(r"[wW](\d+)[aA](\d+)", value.strip()).groups())
    elif isinstance(value, dict) and set(value) == {"w", "a"}:
        w, a = value["w"], value["a"]
    else:
        check.fail(f"bad bits {value!r} in `{where}`; {fix}")
    for bits in (w, a):
        if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
            check.fail(f"bad bits {value!r} in `{where}`; {fix} (full precision is the `fp` baseline)")
    return Bits(w, a)


def _parse_mixed(value: Any, check: _Checker, where: str):
    """`{mixed: {like: 4, candidates: [...], criterion: ...}}` or "mixed:4" -> MixedSpec (None otherwise)."""
    if not (isinstance(value, dict) and "mixed" in value) and not (isinstance(value, str) and "mixed" in value):
        return None
    from bench.mixed.spec import parse_mixed
    try:
        spec = parse_mixed(value, where)
    except ConfigError as exc:
        check.fail(str(exc))
    if spec is None:
        check.fail(f"bad bits {value!r} in `{where}`; write {{mixed: {{like: 4, candidates: [2, 3, 4, 6, 8], "
                   f"criterion: mse}}}} or 'mixed:4'")
    return spec


def _parse_scales(value: Any, check: _Checker, where: str) -> tuple[int, ...] | str | None:
    if value is None or value == ALL:
        return value
    scales = check.list_of(value, where)
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            check.fail(f"bad scale {scale!r} in `{where}`; use upscaling factors such as [2, 3, 4]")
    return tuple(scales)


def _parse_models(value: Any, check: _Checker, default_scales, prefix: str = "") -> tuple[ModelSpec, ...] | str:
    from models.registry import MODEL_REGISTRY, get_entry
    _import_registries()
    if value == ALL:
        return ALL
    if value is None:
        check.fail(f"`{prefix}models` is missing; list model names (see `bench models list`) or write `models: all`")
    specs = []
    for i, item in enumerate(check.list_of(value, f"{prefix}models")):
        where = f"{prefix}models[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = check.mapping(item, where)
        check.keys(item, _MODEL_KEYS, where)
        name = item.get("name")
        if name not in MODEL_REGISTRY:
            check.fail(f"unknown model {name!r} in `{where}`; known models: {', '.join(sorted(MODEL_REGISTRY))}")
        scales = _parse_scales(item["scales"], check, f"{where}.scales") if "scales" in item else default_scales
        registered = get_entry(name).scales
        if isinstance(scales, tuple):
            for scale in scales:
                if scale not in registered:
                    check.fail(f"model {name!r} has no x{scale} in `{where}`; its scales are "
                               f"{', '.join(map(str, registered))}")
        weights = item.get("weights")
        if weights is not None and not isinstance(weights, str):
            check.fail(f"`{where}.weights` must be 'default', 'official', 'shipped', 'random' or a path, got {weights!r}")
        weights = None if weights in (None, "default") else weights
        scope = item.get("scope", AUTO)
        if scope != AUTO and scope not in list_scopes():
            check.fail(f"unknown scope {scope!r} in `{where}.scope`; use {AUTO} or one of: {', '.join(list_scopes())}")
        specs.append(ModelSpec(name, None if scales in (None, ALL) else scales, weights, scope))
    return tuple(specs)


def known_datasets() -> tuple[str, ...]:
    """Dataset names the data layer accepts (its own list when it exposes one)."""
    try:
        from bench.data import dataset as data_module
    except ImportError:
        return FALLBACK_DATASETS
    for attr in ("list_datasets", "known_datasets"):
        fn = getattr(data_module, attr, None)
        if callable(fn):
            return tuple(fn())
    for attr in ("DATASETS", "DATASET_REGISTRY", "KNOWN_DATASETS"):
        table = getattr(data_module, attr, None)
        if table:
            return tuple(table)
    return FALLBACK_DATASETS


def _parse_datasets(value: Any, check: _Checker, prefix: str = "") -> tuple[DatasetSpec, ...] | str:
    if value == ALL:
        return ALL
    if value is None:
        check.fail(f"`{prefix}datasets` is missing; list dataset names such as [Set5, Set14] or write `datasets: all`")
    known = known_datasets()
    by_lower = {name.lower(): name for name in known}
    specs = []
    for i, item in enumerate(check.list_of(value, f"{prefix}datasets")):
        where = f"{prefix}datasets[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = check.mapping(item, where)
        check.keys(item, _DATASET_KEYS, where)
        name = item.get("name")
        # Any other name is a folder <name>/HR under the data root, as in `bench eval --dataset`; whether it
        # exists is checked before the run starts (the data root is a command-line option).
        if not isinstance(name, str) or not name.strip() or "/" in name or "\\" in name:
            check.fail(f"bad dataset {name!r} in `{where}`; use a known dataset ({', '.join(known)}) or the name "
                       f"of a folder <name>/HR under the data root")
        crop = check.int_value(item.get("crop"), f"{where}.crop", minimum=8, allow_none=True)
        max_images = check.int_value(item.get("max_images"), f"{where}.max_images", minimum=1, allow_none=True)
        specs.append(DatasetSpec(by_lower.get(name.lower(), name), crop, max_images))
    return tuple(specs)


def _parse_methods(value: Any, check: _Checker, prefix: str = "") -> tuple[MethodSpec, ...] | str:
    from methods.registry import METHOD_REGISTRY, create_method
    _import_registries()
    if value == ALL:
        return ALL
    if value is None:
        return ()
    specs, labels = [], set()
    for i, item in enumerate(check.list_of(value, f"{prefix}methods")):
        where = f"{prefix}methods[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        item = check.mapping(item, where)
        check.keys(item, _METHOD_KEYS, where)
        name = item.get("name")
        if name not in METHOD_REGISTRY:
            check.fail(f"unknown method {name!r} in `{where}`; known methods: {', '.join(sorted(METHOD_REGISTRY))}"
                       f" (or load your own with --plugin FILE.py)")
        params = check.mapping(item.get("params"), f"{where}.params")
        try:
            create_method(name, **params)
        except Exception as exc:  # noqa: BLE001 - the method's own validation, reported against the entry
            message = " ".join(str(exc).split())
            check.fail(f"bad params for method {name!r} in `{where}.params`: {type(exc).__name__}: {message}")
        label = item.get("label") or name
        if not isinstance(label, str) or label in labels or label in BASELINES:
            check.fail(f"`{where}.label` {label!r} must be a unique name (not fp/bicubic); "
                       f"give each variant of a method its own label")
        labels.add(label)
        bits = None
        if item.get("bits") is not None:
            bits = tuple(parse_bits(b, check, f"{where}.bits") for b in check.list_of(item["bits"], f"{where}.bits"))
        specs.append(MethodSpec(name, label, canonical_json(params), bits))
    return tuple(specs)


def _import_registries() -> None:
    # Importing the packages runs their @register_* decorators.
    import methods  # noqa: F401
    import models  # noqa: F401


def _parse_block(raw: dict, check: _Checker, name: str, prefix: str = "") -> BlockSpec:
    """The cell keys of the top level, or of a block merged over the top level."""
    default_scales = _parse_scales(raw.get("scales"), check, f"{prefix}scales")
    bits = tuple(parse_bits(b, check, f"{prefix}bits")
                 for b in check.list_of(raw.get("bits", [4]), f"{prefix}bits"))
    baselines = tuple(check.list_of(raw.get("baselines", []) or [], f"{prefix}baselines"))
    for baseline in baselines:
        if baseline not in BASELINES:
            check.fail(f"unknown baseline {baseline!r} in `{prefix}baselines`; use {', '.join(BASELINES)}")
    methods = _parse_methods(raw.get("methods"), check, prefix)
    peers = _parse_peers(raw.get("peers"), bits, check, prefix)
    if not methods and not baselines and not peers:
        where = f"block `{prefix.rstrip('.')}`" if prefix else "the matrix"
        check.fail(f"{where} has neither `methods` nor `baselines`; add at least one")
    clash = sorted({m.label for m in methods if methods != ALL} & set(peers))
    if clash:
        check.fail(f"`{prefix}methods` label {clash[0]!r} is also a peer's name; give the method another label")
    return BlockSpec(name, _parse_models(raw.get("models"), check, default_scales, prefix),
                     _parse_datasets(raw.get("datasets"), check, prefix), bits, methods, baselines, default_scales,
                     peers)


def _parse_peers(value: Any, bits: tuple[Bits, ...], check: _Checker, prefix: str = "") -> tuple[str, ...]:
    """The runtimes' own PTQ (bench.export.peers) at the block's bits, which must be W8A8 or W7A8."""
    from bench.export.peers import PEER_BITS, PEERS
    peers = tuple(check.list_of(value or [], f"{prefix}peers"))
    for name in peers:
        if name not in PEERS:
            check.fail(f"unknown peer {name!r} in `{prefix}peers`; use {', '.join(PEERS)}")
    wrong = [b.label for b in bits if (b.w, b.a) not in PEER_BITS or b.mixed is not None]
    if peers and wrong:
        check.fail(f"`{prefix}peers` run at W8A8 or W7A8 only (the runtimes' int8 PTQ), but the bits are "
                   f"{', '.join(wrong)}; put the peers in a block with `bits: [8]` or `bits: [w7a8]`")
    return peers


def _parse_runtimes(value: Any, check: _Checker, where: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    runtimes = tuple(check.list_of([value] if isinstance(value, str) else (value or []), where))
    for runtime in runtimes:
        if runtime not in allowed:
            check.fail(f"{where}: {runtime!r} is not a runtime; use {', '.join(allowed[:-1])} or {allowed[-1]}")
    return runtimes


def _parse_blocks(raw: dict, check: _Checker) -> tuple[BlockSpec, ...]:
    """Each block over the top level's cell keys; a label keeps one method and params across blocks."""
    items = raw.get("blocks")
    if items is None:
        return ()
    if not isinstance(items, list) or not items:
        check.fail("`blocks` must be a non-empty list of mappings (each with some of "
                   f"{', '.join(sorted(_BLOCK_KEYS))})")
    inherited = {k: v for k, v in raw.items() if k in _BLOCK_KEYS - {"name"}}
    blocks, seen = [], {}
    for i, item in enumerate(items):
        prefix = f"blocks[{i}]."
        item = check.mapping(item, f"blocks[{i}]")
        check.keys(item, _BLOCK_KEYS, f"blocks[{i}] (matrix-wide settings such as calibration stay at the top level)")
        block = _parse_block({**inherited, **item}, check, str(item.get("name") or f"block {i}"), prefix)
        for method in block.methods if block.methods != ALL else ():
            first = seen.setdefault(method.label, (method.name, method.params_json, i))
            if first[:2] != (method.name, method.params_json):
                check.fail(f"label {method.label!r} in `{prefix}methods` names {method.name} "
                           f"{method.params_json or '(defaults)'}, but blocks[{first[2]}] gives it {first[0]} "
                           f"{first[1] or '(defaults)'}; give each variant its own label (tables show one row per label)")
        blocks.append(block)
    return tuple(blocks)


def parse_matrix(raw: dict, path: Path) -> MatrixSpec:
    check = _Checker(path)
    check.keys(raw, _TOP_KEYS, "the matrix")
    blocks = _parse_blocks(raw, check)
    # With blocks, the top level only lends its keys to them: it need not be a whole block itself.
    top = blocks[0] if blocks else _parse_block(raw, check, str(raw.get("name") or path.stem))

    calib = check.mapping(raw.get("calibration"), "calibration")
    check.keys(calib, {"n", "patch", "seed", "train_dir", "val"}, "calibration")
    defaults = CalibrationSpec()
    calibration = CalibrationSpec(
        n=check.int_value(calib.get("n", defaults.n), "calibration.n", 1),
        patch=check.int_value(calib.get("patch", defaults.patch), "calibration.patch", 8),
        seed=check.int_value(calib.get("seed", defaults.seed), "calibration.seed", 0),
        train_dir=calib.get("train_dir"),
        val=check.bool_value(calib.get("val", False), "calibration.val"))
    ev = check.mapping(raw.get("eval"), "eval")
    check.keys(ev, {"lpips", "runtimes"}, "eval")
    lat = check.mapping(raw.get("latency"), "latency")
    check.keys(lat, {"runs", "lr_size", "runtime"}, "latency")
    timed = _parse_runtimes(lat.get("runtime", "torch"), check, "latency.runtime", ("torch",) + RUNTIMES)
    if "torch" in timed and len(timed) > 1:
        check.fail("latency.runtime: torch times the fake-quant model on its own; list onnxruntime and/or "
                   "openvino, or give torch alone")
    cost = check.mapping(raw.get("cost"), "cost")
    check.keys(cost, {"lr_size"}, "cost")

    return MatrixSpec(
        name=str(raw.get("name") or path.stem),
        path=path,
        description=str(raw.get("description") or ""),
        models=top.models,
        datasets=top.datasets,
        bits=top.bits,
        methods=top.methods,
        baselines=top.baselines,
        default_scales=top.default_scales,
        peers=top.peers,
        calibration=calibration,
        eval=EvalSpec(lpips=check.bool_value(ev.get("lpips", False), "eval.lpips"),
                      runtimes=_parse_runtimes(ev.get("runtimes"), check, "eval.runtimes", RUNTIMES)),
        latency=LatencySpec(runs=check.int_value(lat.get("runs", 3), "latency.runs", 0),
                            lr_size=check.int_value(lat.get("lr_size", 128), "latency.lr_size", 8),
                            runtime=(timed or ("torch",))[0], runtimes=timed if len(timed) > 1 else ()),
        cost=CostSpec(lr_size=check.int_value(cost.get("lr_size", 128), "cost.lr_size", 8)),
        save_images=check.bool_value(raw.get("save_images", False), "save_images"),
        seed=check.int_value(raw.get("seed", 0), "seed", 0),
        all_models_weights=_all_models_weights(raw.get("all_models_weights", "official"), check),
        blocks=blocks,
    )
