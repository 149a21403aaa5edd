"""Bold and "best" only for a lead larger than the margin (or a significant test): bench.runner.winners, applied
alike by `bench table` (md, LaTeX, csv), the significance tests and the HTML report."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.report.significance import compare_to_best
from bench.runner.records import read_records
from bench.runner.tables import build_tables, render
from bench.runner.winners import PSNR_MARGIN, SSIM_MARGIN, decide

IMAGES = [f"img{i}" for i in range(8)]
# Per-image PSNR offsets around a method's mean: mixed signs, so two methods whose means differ by a few
# hundredths are not significantly different (the test sees the per-image scatter).
SPREAD = [0.9, -0.7, 0.4, -0.8, 0.6, -0.3, 0.5, -0.6]


def _record(label: str, psnr: float, ssim: float, spread: list[float] = SPREAD) -> dict:
    per = [{"name": n, "psnr": psnr + d, "ssim": ssim} for n, d in zip(IMAGES, spread)]
    return {"key": f"swinir-light/x2/{label}/W4A4/sample", "model": "swinir-light", "scale": 2, "method": label,
            "label": label, "method_params": {}, "w_bits": 4, "a_bits": 4, "dataset": "sample",
            "dataset_label": "sample", "status": "ok", "images": 8, "expected_images": 8, "is_subset": False,
            "crop": None, "psnr": sum(p["psnr"] for p in per) / 8, "ssim": ssim, "per_image": per}


def _fp() -> dict:
    record = _record("fp", 32.6134, 0.93114)
    return {**record, "key": "swinir-light/x2/fp/FP/sample", "w_bits": 32, "a_bits": 32}


# The demo's SwinIR-light x2: every method prints 32.61 dB; SSIM 0.9310 against 0.9309 (one printed step).
# Each method scatters differently over the images, so no pair differs significantly either.
TIED = [_fp(), _record("minmax", 32.6091, 0.93093, SPREAD[::-1]), _record("dobi", 32.6112, 0.93101, SPREAD[2:] + SPREAD[:2]),
        _record("2dquant", 32.6119, 0.93104)]
# The same rows with 2DQuant 0.08 dB and 0.0011 SSIM ahead of the runner-up (DOBI).
AHEAD = TIED[:3] + [_record("2dquant", 32.6912, 0.93211)]


def _rows(md: str) -> dict[str, list[str]]:
    return {r[0]: r[2:] for r in ([c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
                                  if line.startswith("| ")) if r[0] != "Method"}


def _html_page(records: list[dict], tmp_path):
    from bench.report.html import RunRecords, build_report
    from bench.runner.rundir import RunDir
    return build_report([RunRecords(RunDir(tmp_path), [dict(r) for r in records])], None)


def test_margins_are_compared_as_printed():
    assert (PSNR_MARGIN.steps, SSIM_MARGIN.steps) == (5, 5)
    # A lead of exactly the margin ties; one printed step more wins. Float noise (32.66 - 32.61 != 0.05) plays no part.
    assert decide([32.66, 32.61], "psnr").tie and decide([32.66, 32.61], "psnr").lead == 0.05
    assert decide([32.61, 32.67], "psnr").winner == 1
    assert decide([0.9316, 0.9311], "ssim").tie and decide([0.9317, 0.9311], "ssim").winner == 0
    # Unrounded values are read at printed precision: 32.6549 prints 32.65, 0.04 dB over 32.6051 (32.61).
    assert decide([32.6549, 32.6051], "psnr").lead == 0.04
    # The runner-up is the second value even when it ties with the top: no win.
    assert decide([25.11, 25.11, 20.0], "psnr").lead == 0.0 and decide([25.11, 25.11, 20.0], "psnr").tie
    # The test lets a lead within the margin win, never a printed lead of zero, and only for PSNR.
    assert decide([32.63, 32.61], "psnr", significant=True).by_test
    assert decide([32.61, 32.61], "psnr", significant=True).tie
    assert decide([0.9312, 0.9311], "ssim", significant=True).tie
    # One value, or none: nothing to compare, and no tie either.
    assert decide([32.61, None], "psnr").winner is None and not decide([32.61, None], "psnr").tie


def test_more_printed_digits_keep_the_margin_in_db():
    # PSNR to 3 decimals (`bench table --digits psnr=3`): 50 steps of 0.001 dB, still a 0.05 dB margin.
    assert (PSNR_MARGIN.at(3).steps, PSNR_MARGIN.at(3).text()) == (50, "0.050 dB") and PSNR_MARGIN.at(None) is PSNR_MARGIN
    # The SwinIR-light W2A2 reference table: CondiQuant 35.109 over 2DQuant 35.105, a lead of 0.004 dB: a tie.
    verdict = decide([35.10476, 35.10872], "psnr", digits=3)
    assert verdict.tie and verdict.lead == 0.004
    # Exactly the margin ties at 3 digits as at 2; a lead is read at the printed precision, so 32.661 over
    # 32.610 (0.051 dB) wins at 3 digits, while at 2 both print a 0.05 dB lead, a tie.
    assert decide([32.660, 32.610], "psnr", digits=3).tie
    assert decide([32.661, 32.610], "psnr", digits=3).winner == 0 and decide([32.661, 32.610], "psnr").tie
    assert decide([0.93161, 0.93110], "ssim", digits=5).winner == 0 and decide([0.93160, 0.93110], "ssim", digits=5).tie
    with pytest.raises(ValueError, match="psnr printed to 1 decimals cannot show its margin 0.05 dB"):
        PSNR_MARGIN.at(1)


def test_a_table_printed_to_three_decimals_keeps_the_rule():
    tied = render(build_tables(TIED, deployment=False, digits="psnr=3"), "md")
    rows = _rows(tied)
    assert rows["MinMax"] == ["32.609", "0.9309"] and rows["DOBI"] == ["32.611", "0.9310"]
    assert rows["2DQuant"] == ["32.612", "0.9310"] and "**" not in tied   # a lead of 0.001 dB: a tie
    assert "Tie: 4-bit sample PSNR (lead 0.001 dB); 4-bit sample SSIM (lead 0.0000)." in tied
    assert "Bold: lead > 0.05 dB PSNR / > 0.0005 SSIM over the runner-up of its bit group" in tied
    tables = build_tables(AHEAD, deployment=False, digits={"psnr": 3, "ssim": 5})
    ahead = render(tables, "md")
    assert _rows(ahead)["2DQuant"] == ["**32.691**", "**0.93211**"] and ahead.count("**") == 4   # 0.080 dB ahead
    assert r"2DQuant & 4 & \textbf{32.691} & \textbf{0.93211} \\" in render(tables, "latex")
    assert "2DQuant,4,0,32.691,0.93211" in render(tables, "csv")


@pytest.mark.parametrize("spec, message", [
    ("psnr=1", "psnr prints 2 to 6 decimals (fewer than 2 cannot show its bold margin 0.05 dB)"),
    ("snr=3", "unknown metric 'snr'"), ("psnr=three", "'three' is not a whole number"), ("psnr", "write metric=decimals")])
def test_bad_digits_name_the_fix(spec, message):
    from bench.errors import ConfigError
    from bench.runner.tables import metric_digits
    assert metric_digits("psnr=3") == {"psnr": 3, "ssim": 4} and metric_digits(None) == {"psnr": 2, "ssim": 4}
    with pytest.raises(ConfigError, match="e.g. --digits psnr=3,ssim=4") as error:
        metric_digits(spec)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("significance", [False, True])
def test_a_lead_within_the_margin_is_a_tie_everywhere(significance, tmp_path):
    tables = build_tables(TIED, significance=significance, deployment=False)
    md = render(tables, "md")
    rows = _rows(md)
    assert rows["MinMax"] == ["32.61", "0.9309"] and rows["2DQuant"] == ["32.61", "0.9310"]
    assert "**" not in md and "best" not in md.lower()
    assert "Tie: 4-bit sample PSNR (lead 0.00 dB); 4-bit sample SSIM (lead 0.0000)." in md
    assert "Bold: lead > 0.05 dB PSNR / > 0.0005 SSIM over the runner-up of its bit group" in md
    latex = render(tables, "latex")
    assert r"\textbf" not in latex and "% Tie: 4-bit sample PSNR (lead 0.00 dB)" in latex
    assert r"otherwise tie, no bold.}" in latex  # the rule is in the caption
    if significance:
        assert render(tables, "csv").splitlines()[4].endswith(",tie")  # 2DQuant's p column: the group's top, a tie


def test_a_lead_beyond_the_margin_bolds_the_winner_everywhere():
    tables = build_tables(AHEAD, deployment=False)
    md = render(tables, "md")
    rows = _rows(md)
    assert rows["2DQuant"] == ["**32.69**", "**0.9321**"]
    assert rows["DOBI"] == ["32.61", "0.9310"] and md.count("**") == 4
    assert "Tie:" not in md
    assert r"2DQuant & 4 & \textbf{32.69} & \textbf{0.9321} \\" in render(tables, "latex")


def test_significance_and_html_report_follow_the_same_rule(tmp_path):
    tied = {c.label: c for c in compare_to_best(TIED)}
    assert tied["2dquant"].is_best and tied["2dquant"].p_text() == "tie" and not tied["dobi"].significant
    ahead = {c.label: c for c in compare_to_best(AHEAD)}
    assert ahead["2dquant"].p_text() == "best" and ahead["2dquant"].lead == 0.08

    page = _html_page(TIED, tmp_path).html
    section = page[page.index('<section id="significance">'):page.index('<section id="charts">')]
    assert ">best<" not in section and "tie: top mean PSNR, lead 0.00 dB" in section
    table3 = page[page.index('<table class="sortable table3">'):page.index('<section id="significance">')]
    assert 'class="best"' not in table3 and "Tie: 4-bit sample PSNR (lead 0.00 dB)" in table3

    page = _html_page(AHEAD, tmp_path).html
    section = page[page.index('<section id="significance">'):page.index('<section id="charts">')]
    assert section.count(">best<") == 2  # the winner's p and verdict cells
    assert '<td class="text">2DQuant</td><td class="text">2DQuant</td>' in section
    bold = re.findall(r'<td class="best" data-v="[^"]*" data-row="([^"]+)" data-col="([^"]+)"', page)
    assert bold == [("2DQuant|4", "sample|psnr"), ("2DQuant|4", "sample|ssim")]


def test_a_significant_test_decides_a_psnr_lead_within_the_margin(tmp_path):
    # 2DQuant 0.03 dB above DOBI and MinMax on every image: within the margin, but significant (p = 2/2^8).
    records = [_fp(), _record("minmax", 32.60, 0.9309, SPREAD), _record("dobi", 32.60, 0.9310, SPREAD),
               _record("2dquant", 32.63, 0.9310, SPREAD)]
    plain = _rows(render(build_tables(records, deployment=False), "md"))
    assert plain["2DQuant"] == ["32.63", "0.9310"]                  # margin alone: a tie
    tested = render(build_tables(records, significance=True, deployment=False), "md")
    assert _rows(tested)["2DQuant"] == ["**32.63**", "0.9310"]     # the test decides PSNR, not SSIM
    assert "Tie: 4-bit sample SSIM (lead 0.0000)." in tested
    assert {c.label: c for c in compare_to_best(records)}["2dquant"].p_text() == "best"


def test_the_committed_demo_run_ties_at_w8a8_and_bolds_2dquant_at_w4a4():
    records = read_records(Path(__file__).resolve().parents[1] / "results" / "reference" / "demo-run" / "records.jsonl")
    table = render(build_tables(records, deployment=False), "md")
    # W8A8: every method within 0.14 dB of FP and within 0.09 dB of each other, the top two within 0.01 dB: no
    # bold, a tie. W4A4: 2DQuant leads EMMSE by 0.11 dB PSNR and 0.0013 SSIM (both bold).
    assert "| 2DQuant (50 DQC steps)       | 8      | 33.74         | 0.9404        |" in table
    assert "| 2DQuant (50 DQC steps)       | 4      | **32.90**     | **0.9204**    |" in table
    assert table.count("**") == 4
    assert "Tie: 8-bit sample PSNR (lead 0.01 dB); 8-bit sample SSIM (lead 0.0001)." in table
    tests = {(c.bits, c.label): c for c in compare_to_best(records)}
    assert tests[("8", "minmax")].p_text() == "tie"
    assert tests[("4", "2dquant-tiny")].p_text() == "best"
    # The mixed DOBI cell (budget W4A4, 0.09 dB above 2DQuant) is its own group: inside the uniform 4-bit group
    # it would be the best, and a mixed cell turned 2DQuant's "best" into a tie before (the grouping bug).
    assert tests[("mixed4", "dobi")].is_best and tests[("4", "dobi")].label == "dobi"
