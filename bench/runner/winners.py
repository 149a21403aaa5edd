"""When a results table may call a method the best of its bit group, and when it must say "tie".

The rule, the same in `bench table` (md, LaTeX), `bench run`'s printout, the significance tests and `bench report`:
the top value of a column wins only when its lead over the runner-up is larger than the metric's margin, both
read as printed (PSNR to 2 decimals, SSIM to 4, or the decimals `bench table --digits` asks for: the margins stay
0.05 dB and 0.0005, compared at the printed precision), so a reader can check every bold cell against the numbers
beside it. Where the Wilcoxon tests were run (`--significance`, the HTML report), a PSNR lead within the margin
also wins when the paired test says the top method differs significantly from every other method of its group.
Anything else is a tie: no bold, no "best".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Margin:
    """A lead must be larger than `value` (in the metric's unit) to win; values are compared as printed."""
    metric: str
    digits: int        # decimals a table prints by default (the fewest at which the margin is whole printed steps)
    value: float
    unit: str          # as written after a number: " dB" or ""

    @property
    def steps(self) -> int:
        """The margin in units of the last printed digit (integers: no float noise in the comparison)."""
        return round(self.value * 10 ** self.digits)

    def printed(self, value: float) -> int:
        """The value as printed, in units of the last printed digit."""
        return round(round(float(value), self.digits) * 10 ** self.digits)

    def text(self, value: float | None = None) -> str:
        return f"{self.value if value is None else value:.{self.digits}f}{self.unit}"

    def at(self, digits: int | None) -> Margin:
        """The same margin read at `digits` printed decimals (None: the default). More decimals make more steps
        of the same size in dB: at 3 decimals the PSNR margin is 50 steps of 0.001 dB, still 0.05 dB."""
        if digits is None or digits == self.digits:
            return self
        if digits < self.digits:
            raise ValueError(f"{self.metric} printed to {digits} decimals cannot show its margin {self.text()}; "
                             f"print at least {self.digits}")
        return replace(self, digits=digits)


# PSNR: 0.05 dB, five steps of the printed 0.01 dB. The same quantized cell moves by up to that much when only
# the thread count changes (reduction order; tests/test_runner.py allows 0.05 dB for one-shot methods) and
# fine-tuned methods by more (the demo's 2DQuant on FSRCNN: 25.11 dB on 1 thread, 24.86 dB on 2): a smaller lead
# is within what a rerun of the same method produces, so it ranks nothing.
PSNR_MARGIN = Margin("psnr", 2, 0.05, " dB")
# SSIM: 0.0005, five steps of the printed 0.0001, the PSNR margin's counterpart. In this project's tables SSIM
# moves 0.017-0.035 per dB of PSNR (the demo's SwinIR-light FP vs bicubic: 0.99 dB, 0.0165; IMDN W4A4 EMMSE vs
# AdaRound: 0.48 dB, 0.0169), so 0.05 dB corresponds to 0.0008-0.0018 SSIM; 0.0005 is below that range, so the
# SSIM rule never hides a lead that the PSNR rule would show.
SSIM_MARGIN = Margin("ssim", 4, 0.0005, "")
MARGINS = {m.metric: m for m in (PSNR_MARGIN, SSIM_MARGIN)}


@dataclass(frozen=True)
class Verdict:
    """The outcome of one column of one bit group."""
    winner: int | None      # index of the winning value, None for a tie or nothing to compare
    lead: float | None      # top minus runner-up, as printed; None with fewer than two values
    by_test: bool = False   # won by the Wilcoxon test with a lead within the margin

    @property
    def tie(self) -> bool:
        return self.winner is None and self.lead is not None


def decide(values: Sequence[float | None], metric: str, significant: bool = False,
           digits: int | None = None) -> Verdict:
    """Who wins among `values` (None: no value, takes no part), read at `digits` decimals (None: the metric's
    default, Margin.digits).

    `significant`: the paired Wilcoxon test applies to every other member of the group and finds each
    significantly different from the top one (bench.report.significance.top_differs_from_all). It lets a
    PSNR lead within the margin win, never a lead of zero at printed precision."""
    margin = MARGINS[metric].at(digits)
    shown = sorted(((margin.printed(v), i) for i, v in enumerate(values) if v is not None), reverse=True)
    if len(shown) < 2:
        return Verdict(None, None)
    (top, index), (runner_up, _) = shown[0], shown[1]
    steps = top - runner_up
    lead = steps / 10 ** margin.digits
    if steps > margin.steps:
        return Verdict(index, lead)
    if significant and metric == "psnr" and steps > 0:
        return Verdict(index, lead, by_test=True)
    return Verdict(None, lead)


def rule_text(significance: bool) -> str:
    """The legend of bold, as tables, captions and the HTML report print it."""
    text = (f"Bold: lead > {PSNR_MARGIN.text()} PSNR / > {SSIM_MARGIN.text()} SSIM over the runner-up of its bit "
            f"group (printed values)")
    if significance:
        text += ", or a PSNR lead with every other method of the group significantly below it (Wilcoxon)"
    return text + "; otherwise tie, no bold."
