"""Paired Wilcoxon signed-rank tests on per-image PSNR: every method against the best of its bit group.

A group is one (model, scale, dataset, W/A bits), as in the tables: the methods that compete for bold. Its
top method is the one with the highest mean PSNR. Each other method is compared with it on the images both
evaluated (paired by image name), two-sided, with `scipy.stats.wilcoxon`'s defaults (zero differences
dropped, exact distribution for small samples). With fewer than `MIN_IMAGES` paired images the test has
too little power to mean anything (n=5 cannot reach p < 0.05 two-sided: the smallest exact p is 2/2^5),
so it is reported as not applicable instead of a p-value.

The top method is called "best" only when it wins by bench.runner.winners' rule, as the tables bold it: a
printed PSNR lead over the runner-up larger than the margin, or every other method significantly below it.
Otherwise the group is a tie.
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from bench.runner.records import mixed_tag
from bench.runner.winners import PSNR_MARGIN, decide

ALPHA = 0.05
MIN_IMAGES = 6
BASELINES = ("fp", "bicubic")
MARKER = "†"   # significantly different from the best of its bit group
EXACT_LIMIT = 50  # scipy's "auto": exact distribution up to 50 pairs (without zeros or ties), normal beyond


@dataclass(frozen=True)
class Comparison:
    """One method of one group against the group's top method (highest mean PSNR)."""
    model: str
    scale: int
    dataset: str          # dataset label, as in the table columns (e.g. "Set5[crop64]")
    bits: str             # as in the tables' Bits column: "4", or "W4A8"
    label: str            # the method's record label
    best_label: str       # the group's top method (highest mean PSNR), "best" only when `top_wins`
    n: int                # paired images
    statistic: float | None = None
    p_value: float | None = None
    top_wins: bool | None = None   # the top method wins its group (bench.runner.winners); None: a group of one
    lead: float | None = None      # the top's printed PSNR lead over the runner-up (dB); None: a group of one

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
        """The p-value as printed in CSV and HTML: for the top method "best", "tie" or "" (alone in its group);
        else "n/a" (fewer than MIN_IMAGES images) or 4 significant digits."""
        if self.is_best:
            return "" if self.top_wins is None else "best" if self.top_wins else "tie"
        if self.p_value is None:
            return "n/a"
        return f"{self.p_value:.4g}"

    def verdict(self) -> str:
        """The significance table's verdict column."""
        if self.is_best:
            return ("only method of its group" if self.top_wins is None else "best" if self.top_wins
                    else f"tie: top mean PSNR, lead {PSNR_MARGIN.text(self.lead)} (needs > {PSNR_MARGIN.text()} "
                         f"or every other method significantly below)")
        if self.p_value is None:
            return "not applicable (too few images)"
        return f"significant (p < {ALPHA})" if self.significant else "not significant"

    def describe(self) -> str:
        if self.is_best:
            return f"{self.verdict()} ({self.n} images)"
        if self.p_value is None:
            return f"Wilcoxon test not applicable: {self.n} paired images (< {MIN_IMAGES})"
        verdict = "significant" if self.significant else "not significant"
        return f"vs {self.best_label}: Wilcoxon p = {self.p_text()} on {self.n} images ({verdict} at {ALPHA})"


def bits_text(record: dict) -> str:
    """The record's bit group as the tables print it: "4", "W4A8", or a mixed cell's own tag ("mixed4"), since
    a mixed record's w/a bits are its budget's and must not join the uniform cells of that budget."""
    tag = mixed_tag(record)
    if tag is not None:
        return tag
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


def top_differs_from_all(comparisons: Iterable[Comparison | None]) -> bool:
    """Whether, in one group of two or more methods, the test applies to every method but the top one and
    finds each significantly different from it (None: a method without a test)."""
    found = list(comparisons)
    return (len(found) >= 2 and all(c is not None and (c.is_best or c.significant) for c in found)
            and sum(c.is_best for c in found) == 1)


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
    spans: list[tuple[int, list[dict]]] = []  # where each group's comparisons start, and its records
    for members in groups.values():
        found, to_test = _group_comparisons(members)
        pending += [(len(comparisons) + index, best, other) for index, best, other in to_test]
        spans.append((len(comparisons), members))
        comparisons += found
    tested = wilcoxon_many([(best, other) for _, best, other in pending])
    for (index, _, _), (statistic, p) in zip(pending, tested):
        comparisons[index] = dataclasses.replace(comparisons[index], statistic=statistic, p_value=p)
    for start, members in spans:
        group = comparisons[start:start + len(members)]
        verdict = decide([r["psnr"] for r in members], "psnr", top_differs_from_all(group))
        if verdict.lead is not None:
            comparisons[start:start + len(members)] = [
                dataclasses.replace(c, top_wins=verdict.winner is not None, lead=verdict.lead) for c in group]
    return comparisons


def not_applicable_datasets(comparisons: Iterable[Comparison]) -> dict[str, int]:
    """Datasets where some comparison had too few images: dataset label -> the fewest paired images."""
    out: dict[str, int] = {}
    for c in comparisons:
        if not c.is_best and c.p_value is None:
            out[c.dataset] = min(c.n, out.get(c.dataset, c.n))
    return out
