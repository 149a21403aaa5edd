"""Paired Wilcoxon signed-rank tests on per-image PSNR: every method against the best of its bit group.

A group is one (model, scale, dataset, W/A bits), as in the tables: the methods that compete for bold. Its
best method is the one with the highest mean PSNR. Each other method is compared with it on the images both
evaluated (paired by image name), two-sided, with `scipy.stats.wilcoxon`'s defaults (zero differences
dropped, exact distribution for small samples). With fewer than `MIN_IMAGES` paired images the test has
too little power to mean anything (n=5 cannot reach p < 0.05 two-sided: the smallest exact p is 2/2^5),
so it is reported as not applicable instead of a p-value.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
MIN_IMAGES = 6
BASELINES = ("fp", "bicubic")
MARKER = "†"   # significantly different from the best of its bit group
EXACT_LIMIT = 50  # scipy's "auto": exact distribution up to 50 pairs (without zeros or ties), normal beyond


@dataclass(frozen=True)
class Comparison:
    """One method of one group against the group's best method."""
    model: str
    scale: int
    dataset: str          # dataset label, as in the table columns (e.g. "Set5[crop64]")
    bits: str             # as in the tables' Bits column: "4", or "W4A8"
    label: str            # the method's record label
    best_label: str
    n: int                # paired images
    statistic: float | None = None
    p_value: float | None = None

    @property
    def is_best(self) -> bool:
        return self.label == self.best_label

    @property
    def applicable(self) -> bool:
        return not self.is_best and self.n >= MIN_IMAGES

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA

    def p_text(self) -> str:
        """The p-value as printed in CSV and HTML: "best", "n/a" (fewer than MIN_IMAGES images) or 4 significant digits."""
        if self.is_best:
            return "best"
        if self.p_value is None:
            return "n/a"
        return f"{self.p_value:.4g}"

    def describe(self) -> str:
        if self.is_best:
            return f"best of its group ({self.n} images)"
        if self.p_value is None:
            return f"Wilcoxon test not applicable: {self.n} paired images (< {MIN_IMAGES})"
        verdict = "significant" if self.significant else "not significant"
        return f"vs {self.best_label}: Wilcoxon p = {self.p_text()} on {self.n} images ({verdict} at {ALPHA})"


def bits_text(record: dict) -> str:
    w, a = record.get("w_bits"), record.get("a_bits")
    return str(w) if w == a else f"W{w}A{a}"


def _group_key(record: dict) -> tuple:
    return (record["model"], record["scale"], record.get("dataset_label") or record["dataset"], bits_text(record))


def _per_image_psnr(record: dict) -> dict[str, float]:
    return {p["name"]: float(p["psnr"]) for p in record.get("per_image") or [] if p.get("psnr") is not None}


def wilcoxon_p(best: list[float], other: list[float]) -> tuple[float, float]:
    """(statistic, two-sided p) of scipy's signed-rank test on paired values."""
    return wilcoxon_many([(best, other)])[0]


def _batchable(best: np.ndarray, other: np.ndarray) -> bool:
    """Whether this pair gets the same scipy method inside a batch as alone.

    scipy picks the method of a whole call at once: over 50 pairs, the normal approximation; else the exact
    distribution unless *any* row has a zero difference or tied magnitudes. So rows of more than 50 images, and
    rows with neither zeros nor ties, give in a batch exactly what they give alone."""
    diff = best - other
    return diff.size > EXACT_LIMIT or (np.all(diff != 0) and np.unique(np.abs(diff)).size == diff.size)


def wilcoxon_many(pairs: list[tuple[list[float], list[float]]]) -> list[tuple[float, float]]:
    """`scipy.stats.wilcoxon` of each (best, other) pair, batched by sample size where that changes nothing.

    One vectorised call per sample size instead of one call per pair: scipy's per-call overhead (~1 ms)
    dominated reports of thousands of cells. Pairs with zeros or ties run alone (see `_batchable`)."""
    from scipy.stats import wilcoxon
    arrays = [(np.asarray(b, dtype=float), np.asarray(o, dtype=float)) for b, o in pairs]
    results: list[tuple[float, float] | None] = [None] * len(arrays)
    batches: dict[int, list[int]] = {}
    with warnings.catch_warnings():
        # All-zero differences (two methods with identical outputs) give p = 1 with a divide warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        for index, (best, other) in enumerate(arrays):
            if _batchable(best, other):
                batches.setdefault(best.size, []).append(index)
            else:
                result = wilcoxon(best, other)
                results[index] = (float(result.statistic), float(result.pvalue))
        for indices in batches.values():
            result = wilcoxon(np.stack([arrays[i][0] for i in indices]), np.stack([arrays[i][1] for i in indices]),
                              axis=1)
            for i, statistic, p in zip(indices, np.atleast_1d(result.statistic), np.atleast_1d(result.pvalue)):
                results[i] = (float(statistic), float(p))
    return results  # type: ignore[return-value]


def _group_comparisons(members: list[dict]) -> tuple[list[Comparison], list[tuple[int, list[float], list[float]]]]:
    """The group's comparisons, and the (index, best, other) pairs still to test."""
    best = max(members, key=lambda r: r["psnr"])
    best_scores = _per_image_psnr(best)
    model, scale, dataset, bits = _group_key(best)
    out, pending = [], []
    for record in members:
        scores = _per_image_psnr(record)
        common = [name for name in best_scores if name in scores]
        out.append(Comparison(model, scale, dataset, bits, record["label"], best["label"], len(common)))
        if record is not best and len(common) >= MIN_IMAGES:
            pending.append((len(out) - 1, [best_scores[n] for n in common], [scores[n] for n in common]))
    return out, pending


def compare_to_best(records: Iterable[dict]) -> list[Comparison]:
    """Comparisons for every quantized record with a PSNR (FP and bicubic rows have no group to compete in).

    Groups with a single method hold only that method, marked best."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        if record.get("status", "ok") != "ok" or record["method"] in BASELINES or record.get("psnr") is None:
            continue
        groups.setdefault(_group_key(record), []).append(record)
    comparisons: list[Comparison] = []
    pending: list[tuple[int, list[float], list[float]]] = []
    for members in groups.values():
        found, to_test = _group_comparisons(members)
        pending += [(len(comparisons) + index, best, other) for index, best, other in to_test]
        comparisons += found
    tested = wilcoxon_many([(best, other) for _, best, other in pending])
    for (index, _, _), (statistic, p) in zip(pending, tested):
        comparisons[index] = dataclasses.replace(comparisons[index], statistic=statistic, p_value=p)
    return comparisons


def not_applicable_datasets(comparisons: Iterable[Comparison]) -> dict[str, int]:
    """Datasets where some comparison had too few images: dataset label -> the fewest paired images."""
    out: dict[str, int] = {}
    for c in comparisons:
        if not c.is_best and c.p_value is None:
            out[c.dataset] = min(c.n, out.get(c.dataset, c.n))
    return out
