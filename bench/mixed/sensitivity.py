"""Per-layer sensitivity: how much setting one quantized layer to a candidate (w_bits, a_bits) costs, with a
given method's bounds, measured on a held-out calibration batch (never a test set).

Procedure. The method calibrates the model once per candidate pair under uniform bits (and once at the
context's bits), on the calibration batch. A layer's score at a pair c is then measured by swapping that layer
(its weight and input quantizers together, as one module) for the same layer of the model calibrated at c, in

  * context "context" (default): a model where every other layer is at the budget's uniform bits (`like`), the
    scope's fixed-bit layers at their own bits;
  * context "alone": a model where every other layer is full precision.

Criteria:
  * "mse" (default): mean squared error of the SR output against the FP model's, on the score batch. In
    context, the pair equal to `like` leaves the model unchanged, so every layer scores the context's own MSE
    there (measured once).
  * "hawq-v2": HAWQ-V2's Omega = Tr(H)/n * ||Q(W) - W||^2 for the layer's weight, plus the same term for its
    input activation (Tr of the Hessian w.r.t. the layer's input, times ||Q(x) - x||^2 over the batch), with
    H the Hessian of the output-MSE loss of the FP model (at the FP weights the loss is 0 and H = 2/N J^T J).
    The traces come from Hutchinson's estimator (Rademacher vectors, Hessian-vector products by double
    backward through autograd). As in HAWQ-V2 the Hessian is the FP model's, so this criterion has no context:
    its records say "alone".

Results are cached under $BENCH_CACHE/sensitivity/, keyed by the model's weights, the scope, the method and its
parameters, the candidates, the criterion, the context and the content of both batches.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from bench.errors import ConfigError
from bench.mixed.allocate import Pair, candidate_pairs
from bench.quant.surgery import activation_quantizers, quantized_layers, set_quant_enabled

CRITERIA = ("mse", "hawq-v2")
CONTEXTS = ("context", "alone")
CACHE_VERSION = 1


@dataclass(frozen=True)
class SensitivitySettings:
    """What a sensitivity measurement depends on besides the model and the batches."""
    method: str
    params: dict = field(default_factory=dict)
    scope: str = "auto"
    like: Pair = (4, 4)
    candidates: tuple[Pair, ...] = candidate_pairs([2, 3, 4, 6, 8])
    criterion: str = "mse"
    context: str = "context"
    hutchinson_samples: int = 32
    hutchinson_batch: int = 4
    seed: int = 0
    # Refinement (context "context", mse): the context is this allocation ((layer, w, a) triples) instead of
    # uniform `like` bits; a layer's score at its own allocated pair is then the context's MSE.
    context_bits: tuple = ()

    def __post_init__(self) -> None:
        from bench.quant.surgery import normalize_layer_bits
        object.__setattr__(self, "context_bits", normalize_layer_bits(self.context_bits))
        object.__setattr__(self, "candidates", candidate_pairs(self.candidates))
        object.__setattr__(self, "like", candidate_pairs([self.like])[0])
        if self.criterion not in CRITERIA:
            raise ConfigError(f"unknown sensitivity criterion {self.criterion!r}; use one of {', '.join(CRITERIA)}")
        if self.context not in CONTEXTS:
            raise ConfigError(f"unknown sensitivity context {self.context!r}; use one of {', '.join(CONTEXTS)}")
        if self.criterion == "hawq-v2":  # the FP model's Hessian: no context (module docstring)
            object.__setattr__(self, "context", "alone")
        for name in ("hutchinson_samples", "hutchinson_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")


@dataclass
class SensitivityResult:
    """scores[layer][pair]: the criterion with that layer at that pair (lower is better)."""
    model: str
    scale: int
    scope: str
    settings: SensitivitySettings
    layers: list[str]
    scores: dict[str, dict[Pair, float]]
    baseline: float             # the criterion of the context itself (0 for "alone")
    seconds: float
    cached: bool = False

    def to_dict(self) -> dict:
        return {"model": self.model, "scale": self.scale, "scope": self.scope,
                "settings": {**asdict(self.settings), "candidates": [list(c) for c in self.settings.candidates],
                             "like": list(self.settings.like)},
                "layers": self.layers, "baseline": self.baseline, "seconds": self.seconds,
                "scores": {layer: {_pair_key(c): v for c, v in row.items()} for layer, row in self.scores.items()}}

    @classmethod
    def from_dict(cls, data: dict, cached: bool = False) -> SensitivityResult:
        s = dict(data["settings"])
        settings = SensitivitySettings(**{**s, "like": tuple(s["like"]),
                                          "candidates": tuple(tuple(c) for c in s["candidates"])})
        scores = {layer: {_parse_pair(k): float(v) for k, v in row.items()} for layer, row in data["scores"].items()}
        return cls(data["model"], int(data["scale"]), data["scope"], settings, list(data["layers"]), scores,
                   float(data["baseline"]), float(data["seconds"]), cached)

    def ranking(self, pair: Pair | None = None) -> list[str]:
        """Layers from the most to the least sensitive at `pair` (default: the lowest candidate)."""
        pair = pair or min(self.settings.candidates, key=lambda c: c[0] * c[1])
        return sorted(self.layers, key=lambda layer: -self.scores[layer][pair])

    def table(self) -> str:
        """Plain-text table: one row per layer, one column per candidate."""
        pairs = self.settings.candidates
        width = max(len(layer) for layer in self.layers)
        head = f"{'layer':<{width}}  " + "  ".join(f"{_pair_key(c):>10}" for c in pairs)
        rows = [f"{layer:<{width}}  " + "  ".join(f"{self.scores[layer][c]:10.3e}" for c in pairs)
                for layer in self.layers]
        return "\n".join([head, *rows])


def _pair_key(pair: Pair) -> str:
    return f"w{pair[0]}a{pair[1]}"


def _parse_pair(key: str) -> Pair:
    w, a = key[1:].split("a")
    return int(w), int(a)


# ------------------------------------------------------------------------------------------ batches

def score_batch(train_dir: str | Path, scale: int, n: int = 32, patch: int = 64, seed: int = 0) \
        -> tuple[torch.Tensor, str]:
    """(held-out patches to score on, where they come from): the "val" split of the training images (every 10th
    image, never calibrated on); a folder too small to have one (under 10 images, e.g. the demo's sample-train)
    gives other patches of the calibration images (seed + 1), and the description says so."""
    from bench.data.calib import calibration_batch
    from bench.errors import DataError
    try:
        return calibration_batch(train_dir, scale, n=n, patch=patch, seed=seed, split="val"), f"val split, seed {seed}"
    except DataError:
        batch = calibration_batch(train_dir, scale, n=n, patch=patch, seed=seed + 1, split="calib")
        return batch, f"calib split, seed {seed + 1} (the folder has no val split)"


# ------------------------------------------------------------------------------------------ calibrations

Calibrate = Callable[[Pair], nn.Module]


def method_calibrator(fp_model: nn.Module, settings: SensitivitySettings, calib_batch: torch.Tensor,
                      train_dir: Path | None = None, device: str | torch.device = "cpu",
                      progress: bool = False) -> Calibrate:
    """pair -> a copy of `fp_model` calibrated by the method at uniform `pair` in the scope (memoised)."""
    import methods  # noqa: F401  (registers the built-in methods)
    from bench.quant.pipeline import CalibContext, quantize_with_method
    from methods.registry import create_method

    done: dict[Pair, nn.Module] = {}

    def calibrate(pair: Pair) -> nn.Module:
        if pair not in done:
            ctx = CalibContext(fp_model=fp_model, calib_batch=calib_batch.to(device), train_dir=train_dir,
                               device=device, seed=settings.seed, progress=progress)
            method = create_method(settings.method, **settings.params)
            done[pair] = quantize_with_method(fp_model, method, pair[0], pair[1], ctx, scope=settings.scope)[0].eval()
        return done[pair]

    return calibrate


# ------------------------------------------------------------------------------------------ criteria

@torch.no_grad()
def _output_mse(model: nn.Module, batch: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.mean((model(batch).double() - reference.double()) ** 2))


def _swap(model: nn.Module, path: str, module: nn.Module) -> nn.Module:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = getattr(parent, child)
    setattr(parent, child, module)
    return old


def _mse_scores(layers: list[str], settings: SensitivitySettings, calibrate: Calibrate, fp_model: nn.Module,
                batch: torch.Tensor, report: Callable[[str], None]) -> tuple[dict[str, dict[Pair, float]], float]:
    with torch.no_grad():
        reference = fp_model(batch)
    base = copy.deepcopy(calibrate(settings.like if settings.context == "context" else settings.candidates[0]))
    if settings.context == "alone":
        set_quant_enabled(base, False)
    own = {layer: settings.like for layer in layers}
    for layer, w, a in settings.context_bits:  # a refinement's context: the current allocation
        own[layer] = (w, a)
        if (w, a) != settings.like:
            _swap(base, layer, copy.deepcopy(calibrate((w, a)).get_submodule(layer)))
    baseline = _output_mse(base, batch, reference)
    scores: dict[str, dict[Pair, float]] = {layer: {} for layer in layers}
    for i, layer in enumerate(layers):
        for pair in settings.candidates:
            if settings.context == "context" and pair == own[layer]:
                scores[layer][pair] = baseline  # the context itself: nothing changes
                continue
            candidate = copy.deepcopy(calibrate(pair).get_submodule(layer))
            set_quant_enabled(candidate, True)
            old = _swap(base, layer, candidate)
            try:
                scores[layer][pair] = _output_mse(base, batch, reference)
            finally:
                _swap(base, layer, old)
        report(f"{i + 1}/{len(layers)} {layer}")
    return scores, baseline


def hutchinson_traces(fp_model: nn.Module, layers: list[str], batch: torch.Tensor, samples: int,
                      seed: int = 0) -> dict[str, tuple[float, int, float, int]]:
    """{layer: (Tr H_W, numel W, Tr H_x, numel x)}: Hutchinson estimates of the Hessian traces of the output-MSE
    loss (against the FP output) w.r.t. each layer's weight and input, at the FP model.

    One forward and one backward with create_graph; then per sample one Hessian-vector product of all blocks
    at once (double backward), with Rademacher vectors v: E[v_l . (H v)_l] = Tr H_ll."""
    model = copy.deepcopy(fp_model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    deltas: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    handles = []
    weights = {}
    for layer in layers:
        module = model.get_submodule(layer)
        weights[layer] = module.weight
        module.weight.requires_grad_(True)

        def add_delta(mod, inputs, layer=layer):
            # A zero perturbation of the input: the loss's derivatives w.r.t. it are those w.r.t. the input.
            delta = torch.zeros_like(inputs[0], requires_grad=True)
            deltas[layer].append(delta)
            return (inputs[0] + delta, *inputs[1:])

        handles.append(module.register_forward_pre_hook(add_delta))
    try:
        with torch.no_grad():
            reference = fp_model(batch)
        loss = torch.mean((model(batch) - reference) ** 2)
    finally:
        for handle in handles:
            handle.remove()
    blocks = [weights[layer] for layer in layers] + [d for layer in layers for d in deltas[layer]]
    grads = torch.autograd.grad(loss, blocks, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    sums = torch.zeros(len(blocks), dtype=torch.float64)
    for _ in range(samples):
        vs = [(torch.randint(0, 2, b.shape, generator=generator) * 2 - 1).to(b.dtype) for b in blocks]
        hvs = torch.autograd.grad(grads, blocks, grad_outputs=vs, retain_graph=True)
        sums += torch.tensor([float((v * hv).sum()) for v, hv in zip(vs, hvs)], dtype=torch.float64)
    traces = (sums / samples).tolist()
    result, k = {}, len(layers)
    for i, layer in enumerate(layers):
        act = [k + j for j in range(sum(len(deltas[x]) for x in layers[:i]),
                                    sum(len(deltas[x]) for x in layers[:i + 1]))]
        result[layer] = (traces[i], weights[layer].numel(), sum(traces[j] for j in act),
                         sum(blocks[j].numel() for j in act))
    return result


def _layer_inputs(fp_model: nn.Module, layers: list[str], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs, handles = {}, []
    for layer in layers:
        handles.append(fp_model.get_submodule(layer).register_forward_pre_hook(
            lambda mod, args, layer=layer: inputs.setdefault(layer, args[0].detach())))
    try:
        with torch.no_grad():
            fp_model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


@torch.no_grad()
def _quantization_error(module: nn.Module, fp_input: torch.Tensor | None) -> tuple[float, float]:
    """(||Q(W) - W||^2, ||Q(x) - x||^2) of a calibrated layer; a MatMul has no weight (0)."""
    weight_err = 0.0
    for name, q in module.named_modules():
        if getattr(q, "is_weight", False):
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            w = owner.weight
            weight_err += float(((q(w) - w).double() ** 2).sum())
    act_err = 0.0
    if fp_input is not None:
        seen = set()
        for _, q in activation_quantizers(module):
            if id(q) in seen:
                continue
            seen.add(id(q))
            act_err += float(((q(fp_input) - fp_input).double() ** 2).sum())
    return weight_err, act_err


def _hawq_scores(layers: list[str], settings: SensitivitySettings, calibrate: Calibrate, fp_model: nn.Module,
                 batch: torch.Tensor, report: Callable[[str], None]) -> dict[str, dict[Pair, float]]:
    no_weight = [layer for layer in layers if not isinstance(getattr(fp_model.get_submodule(layer), "weight", None),
                                                             torch.Tensor)]
    if no_weight:
        raise ConfigError(f"hawq-v2 scores layers by their weight's Hessian; {no_weight[0]} has no weight: use "
                          f"--criterion mse for this scope")
    small = batch[:settings.hutchinson_batch]
    traces = hutchinson_traces(fp_model, layers, small, settings.hutchinson_samples, settings.seed)
    report(f"Hessian traces ({settings.hutchinson_samples} Hutchinson samples)")
    inputs = _layer_inputs(fp_model, layers, small)
    scores: dict[str, dict[Pair, float]] = {layer: {} for layer in layers}
    for pair in settings.candidates:
        qmodel = calibrate(pair)
        for layer in layers:
            tr_w, n_w, tr_x, n_x = traces[layer]
            module = copy.deepcopy(qmodel.get_submodule(layer))
            set_quant_enabled(module, True)
            weight_err, act_err = _quantization_error(module, inputs.get(layer))
            scores[layer][pair] = tr_w / n_w * weight_err + (tr_x / n_x * act_err if n_x else 0.0)
    return scores


# ------------------------------------------------------------------------------------------ the measurement

def _digest(*parts) -> str:
    h = hashlib.sha1()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(part, nn.Module):
            for name, tensor in part.state_dict().items():
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def _full_params(method: str, params: dict) -> dict:
    """The method's parameters with its defaults filled in (its describe()): `dobi` and `dobi` with its default
    parameters written out calibrate alike, so they share one cache entry."""
    import methods  # noqa: F401  (registers the built-in methods)
    from methods.registry import create_method
    try:
        return dict(create_method(method, **params).describe().get("params", params))
    except (ConfigError, TypeError, ValueError):  # an unknown method or parameter fails later, with its own message
        return dict(params)


def cache_path(fp_model: nn.Module, model_name: str, scale: int, settings: SensitivitySettings,
               calib_batch: torch.Tensor, score_batch: torch.Tensor) -> Path:
    from bench.data.paths import cache_dir
    described = {**asdict(settings), "params": _full_params(settings.method, settings.params)}
    key = _digest(CACHE_VERSION, model_name, scale, described, fp_model, calib_batch, score_batch)
    return cache_dir() / "sensitivity" / f"{model_name}_x{scale}_{settings.method}_{settings.criterion}_" \
                                         f"{settings.context}_{key}.json"


def measure_sensitivity(fp_model: nn.Module, model_name: str, scale: int, settings: SensitivitySettings,
                        calib_batch: torch.Tensor, score_batch: torch.Tensor, *, train_dir: Path | None = None,
                        device: str | torch.device = "cpu", calibrate: Calibrate | None = None,
                        use_cache: bool = True, report: Callable[[str], None] | None = None) -> SensitivityResult:
    """Score every allocatable layer (the scope's layers without fixed bits) at every candidate pair.

    `calib_batch`: what the method calibrates on; `score_batch`: a held-out batch the scores are measured on
    (the "val" split of the training images; never a test set). `calibrate` (pair -> calibrated model) replaces
    the method's own calibrations (tests, or a caller that has them already)."""
    report = report or (lambda _msg: None)
    if torch.equal(calib_batch.cpu(), score_batch.cpu()):
        raise ConfigError("the sensitivity score batch is the calibration batch; score on held-out patches "
                          "(the 'val' split of the training images)")
    path = cache_path(fp_model, model_name, scale, settings, calib_batch, score_batch) if use_cache else None
    if path is not None and path.is_file():
        try:
            return SensitivityResult.from_dict(json.loads(path.read_text()), cached=True)
        except (ValueError, KeyError, TypeError):
            pass  # a corrupt entry is measured again
    fp_model = fp_model.eval()
    layers = [layer.path for layer in quantized_layers(fp_model, settings.scope) if layer.fixed_bits is None]
    if calibrate is None:
        calibrate = method_calibrator(fp_model, settings, calib_batch, train_dir, device)
    start = time.perf_counter()
    batch = score_batch.to(device)
    if settings.criterion == "mse":
        scores, baseline = _mse_scores(layers, settings, calibrate, fp_model, batch, report)
    else:
        scores, baseline = _hawq_scores(layers, settings, calibrate, fp_model, batch, report), 0.0
    from bench.quant.scopes import resolve_scope
    result = SensitivityResult(model_name, scale, resolve_scope(fp_model, settings.scope).name, settings, layers,
                               scores, baseline, time.perf_counter() - start)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.to_dict(), indent=1))
        os.replace(tmp, path)
    return result


# ------------------------------------------------------------------------------------------ the chart

def plot_sensitivity(result: SensitivityResult, path: str | Path) -> list[Path]:
    """Writes `sensitivity_figure(result)` to `path` (.png) and the same chart as .pdf beside it; returns both."""
    import matplotlib.pyplot as plt

    fig = sensitivity_figure(result)
    png = Path(path).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    fig.savefig(png.with_suffix(".pdf"))
    plt.close(fig)
    return [png, png.with_suffix(".pdf")]


def sensitivity_figure(result: SensitivityResult):
    """Grouped bar chart (one group per layer, one bar per candidate; log scale, or in context the change from the
    context on a symmetric log scale), with the legend above the axes, where no bar can lie under it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = result.settings.candidates
    layers = result.layers
    x = np.arange(len(layers))
    width = 0.8 / len(pairs)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.28 * len(layers) * max(1, len(pairs) / 3)), 4.5))
    relative = result.settings.criterion == "mse" and result.settings.context == "context"
    if relative:  # in context every score sits near the context's MSE: draw the change, both signs
        values = {pair: [result.scores[layer][pair] - result.baseline for layer in layers] for pair in pairs}
        largest = max((abs(v) for row in values.values() for v in row), default=1.0) or 1.0
        ax.set_yscale("symlog", linthresh=largest * 1e-3)
        ax.axhline(0.0, color="black", lw=0.8)
        what = (f"output MSE vs FP, minus the context's {result.baseline:.3g}\n(context: uniform "
                f"W{result.settings.like[0]}A{result.settings.like[1]}; below 0 = better than it)")
    else:
        floor = min((v for row in result.scores.values() for v in row.values() if v > 0), default=1e-12)
        values = {pair: [max(result.scores[layer][pair], floor) for layer in layers] for pair in pairs}
        ax.set_yscale("log")
        what = "output MSE vs FP" if result.settings.criterion == "mse" else "HAWQ-V2 Tr(H)/n * ||Q - FP||^2"
    for j, pair in enumerate(pairs):
        ax.bar(x + (j - (len(pairs) - 1) / 2) * width, values[pair], width, label=f"W{pair[0]}A{pair[1]}")
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=90, fontsize=7)
    ax.set_ylabel(what, fontsize=8)
    ax.set_title(f"{result.model} x{result.scale} ({result.scope}): sensitivity per layer, "
                 f"{result.settings.method} bounds, {result.settings.context}", fontsize=10, loc="left")
    ax.legend(fontsize=7, ncol=len(pairs), loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (scipy's, average ranks for ties)."""
    try:
        from scipy.stats import spearmanr
    except ImportError:
        raise ConfigError("the rank correlation needs scipy: pip install -e '.[report]'") from None
    return float(spearmanr(a, b).statistic)


__all__ = ["CRITERIA", "CONTEXTS", "SensitivityResult", "SensitivitySettings", "hutchinson_traces",
           "measure_sensitivity", "method_calibrator", "plot_sensitivity", "score_batch", "sensitivity_figure",
           "spearman"]
