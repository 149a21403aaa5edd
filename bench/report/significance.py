"""Paired Wilcoxon signed-rank tests on per-image PSNR: every method against the best of its bit group.

A group is one (model, scale, dataset, W/A bits), as in the tables: the methods that compete for bold. Its
best method is the one with the highest mean PSNR. Each other method is compared with it on the images both
evaluated (paired by image name), two-sided, with `scipy.stats.wilcoxon`'s defaults (zero differences
dropped, exact distribution for small samples). With fewer than `MIN_IMAGES` paired images the test has
too little power to mean anything (n=5 cannot reach p < 0.05 two-sided: the smallest exact p is 2/2^5),
so it is reported as not applicable instead of a p-value.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

ALPHA = 0.05
MIN_IMAGES = 6
BASELINES = ("fp", "bicubic")
MARKER = "†"   # significantly different from the best of its bit group


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
    from scipy.stats import wilcoxon
    with warnings.catch_warnings():
        # All-zero differences (two methods with identical outputs) give p = 1 with a divide warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        result = wilcoxon(best, other)
    return float(result.statistic), float(result.pvalue)


def _compare_group(members: list[dict]) -> list[Comparison]:
    best = max(members, key=lambda r: r["psnr"])
    best_scores = _per_image_psnr(best)
    model, scale, dataset, bits = _group_key(best)
    out = []
    for record in members:
        scores = _per_image_psnr(record)
        common = [name for name in best_scores if name in scores]
        base = Comparison(model, scale, dataset, bits, record["label"], best["label"], len(common))
        if record is best or len(common) < MIN_IMAGES:
            out.append(base)
            continue
        statistic, p = wilcoxon_p([best_scores[n] for n in common], [scores[n] for n in common])
        out.append(Comparison(**{**base.__dict__, "statistic": statistic, "p_value": p}))
    return out


def compare_to_best(records: Iterable[dict]) -> list[Comparison]:
    """Comparisons for every quantized record with a PSNR (FP and bicubic rows have no group to compete in).

    Groups with a single method hold only that method, marked best."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        if record.get("status", "ok") != "ok" or record["method"] in BASELINES or record.get("psnr") is None:
            continue
        groups.setdefault(_group_key(record), []).append(record)
    return [c for members in groups.values() for c in _compare_group(members)]


def not_applicable_datasets(comparisons: Iterable[Comparison]) -> dict[str, int]:
    """Datasets where some comparison had too few images: dataset label -> the fewest paired images."""
    out: dict[str, int] = {}
    for c in comparisons:
        if not c.is_best and c.p_value is None:
            out[c.dataset] = min(c.n, out.get(c.dataset, c.n))
    return out
