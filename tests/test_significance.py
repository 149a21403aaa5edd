"""Paired Wilcoxon tests against the best of each bit group, and their markers in `bench table --significance`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import wilcoxon

from bench.cli import main
from bench.report.significance import MIN_IMAGES, compare_to_best, wilcoxon_many
from bench.runner.records import read_records
from bench.runner.tables import build_tables, render

IMAGES = [f"img{i}" for i in range(8)]
# Per-image PSNR of three 4-bit methods and the FP baseline on 8 images (DOBI is the best on average).
PSNR = {
    "fp": [38.0, 36.1, 33.2, 35.9, 31.0, 34.4, 37.7, 32.6],
    "dobi": [37.2, 35.0, 32.9, 35.1, 30.2, 33.9, 36.6, 32.0],
    "minmax": [34.1, 33.3, 30.0, 33.2, 28.8, 31.2, 34.9, 30.1],
    "percentile": [37.4, 34.8, 32.7, 35.3, 30.0, 33.8, 36.3, 32.2],   # mixed signs against DOBI
}

SSIM = {"fp": 0.96, "dobi": 0.95, "minmax": 0.9, "percentile": 0.94}


def _record(label: str, scores: list[float], names: list[str] = IMAGES, dataset: str = "Set14") -> dict:
    bits = 32 if label == "fp" else 4
    return {"key": f"imdn/x2/{label}/W{bits}A{bits}/{dataset}", "model": "imdn", "scale": 2, "method": label,
            "label": label, "w_bits": bits, "a_bits": bits, "dataset": dataset, "dataset_label": dataset,
            "status": "ok", "psnr": sum(scores) / len(scores), "ssim": SSIM[label], "images": len(scores),
            "per_image": [{"name": n, "psnr": p, "ssim": 0.9} for n, p in zip(names, scores)]}


def _records(count: int = 8, dataset: str = "Set14") -> list[dict]:
    return [_record(label, scores[:count], IMAGES[:count], dataset) for label, scores in PSNR.items()]


def test_p_values_equal_scipy_wilcoxon_against_the_best_of_the_group():
    tests = {c.label: c for c in compare_to_best(_records())}
    assert set(tests) == {"dobi", "minmax", "percentile"}          # FP competes in no bit group
    # DOBI has the top mean (34.11 dB) but leads Percentile (34.06 dB) by 0.05 dB only, and the test does not
    # separate them: a tie, not "best".
    assert tests["dobi"].is_best and tests["dobi"].p_text() == "tie" and tests["dobi"].lead == 0.05
    assert tests["dobi"].verdict() == ("tie: top mean PSNR, lead 0.05 dB (needs > 0.05 dB or every other method "
                                       "significantly below)")
    for label in ("minmax", "percentile"):
        expected = wilcoxon(PSNR["dobi"], PSNR[label])
        assert tests[label].best_label == "dobi"
        assert tests[label].n == 8
        assert tests[label].p_value == float(expected.pvalue)
        assert tests[label].statistic == float(expected.statistic)
    # Every MinMax image is below DOBI: W = 0, and the exact two-sided p is 2 / 2^8.
    assert tests["minmax"].statistic == 0.0
    assert tests["minmax"].p_value == pytest.approx(2 / 2 ** 8, abs=1e-12)
    assert tests["minmax"].significant
    # Percentile wins on 3 images, loses on 5: not significant.
    assert tests["percentile"].p_value == pytest.approx(float(wilcoxon(PSNR["dobi"], PSNR["percentile"]).pvalue))
    assert tests["percentile"].p_value > 0.05 and not tests["percentile"].significant


def test_the_top_method_is_best_only_when_it_wins():
    without_percentile = [r for r in _records() if r["label"] != "percentile"]
    tests = {c.label: c for c in compare_to_best(without_percentile)}
    assert tests["dobi"].p_text() == "best" and tests["dobi"].verdict() == "best"   # 2.16 dB over MinMax
    assert tests["dobi"].lead == 2.16 and tests["dobi"].top_wins
    # Within the margin, the test decides: MinMax 0.04 dB below DOBI on every image is significant (p = 2/2^8).
    close = [r for r in without_percentile if r["label"] == "dobi"]
    close.append(_record("minmax", [p - 0.04 for p in PSNR["dobi"]]))
    tests = {c.label: c for c in compare_to_best(close)}
    assert tests["minmax"].significant and tests["dobi"].lead == 0.04 and tests["dobi"].p_text() == "best"
    # A group of one method: nothing to win against.
    alone = compare_to_best(close[:1])
    assert alone[0].top_wins is None and alone[0].p_text() == "" and alone[0].verdict() == "only method of its group"


def test_six_images_is_the_smallest_testable_set():
    tests = {c.label: c for c in compare_to_best(_records(count=MIN_IMAGES))}
    assert tests["minmax"].n == 6
    assert tests["minmax"].p_value == pytest.approx(2 / 2 ** 6, abs=1e-12)   # 0.03125: can reach p < 0.05


def test_fewer_than_six_images_is_not_applicable_rather_than_a_p_value():
    tests = {c.label: c for c in compare_to_best(_records(count=5))}
    assert tests["minmax"].p_value is None and tests["minmax"].statistic is None
    assert tests["minmax"].p_text() == "n/a"
    assert tests["minmax"].describe() == "Wilcoxon test not applicable: 5 paired images (< 6)"
    assert not tests["minmax"].significant


def test_images_are_paired_by_name_not_position():
    records = _records()
    minmax = next(r for r in records if r["label"] == "minmax")
    minmax["per_image"] = list(reversed(minmax["per_image"]))[:-1]        # shuffled, and img0 missing
    test = next(c for c in compare_to_best(records) if c.label == "minmax")
    assert test.n == 7
    assert test.p_value == float(wilcoxon(PSNR["dobi"][1:], PSNR["minmax"][1:]).pvalue)


def _write_run(tmp_path, records: list[dict]):
    run = tmp_path / "results" / "sig"
    run.mkdir(parents=True)
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return run


def test_table_marks_significant_rows_in_md_and_latex_and_prints_p_in_csv(tmp_path, capsys):
    records = _records() + _records(count=5, dataset="Set5")
    run = _write_run(tmp_path, records)
    p_minmax = float(wilcoxon(PSNR["dobi"], PSNR["minmax"]).pvalue)
    p_percentile = float(wilcoxon(PSNR["dobi"], PSNR["percentile"]).pvalue)

    assert main(["table", "--run", str(run), "--significance"]) == 0
    md = capsys.readouterr().out
    rows = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
                              if line.startswith("| "))}
    # Columns: Method, Bits, Set5 PSNR, Set5 SSIM, Set14 PSNR, Set14 SSIM.
    assert rows["MinMax"][4] == "31.95†"           # significantly below DOBI on Set14
    assert rows["Percentile"][4] == "34.06"        # not significant: no marker
    assert rows["DOBI"][4] == "34.11"              # the top, but 0.05 dB over Percentile and not significant: tie
    assert rows["MinMax"][2] == "31.88"            # Set5 (5 images): no test, no marker
    assert ("†: PSNR differs from the top of its bit group, the highest mean PSNR (paired Wilcoxon signed-rank test "
            "on per-image PSNR, p < 0.05). Not applicable (fewer than 6 paired images): Set5 (5 images).") in md
    assert "Tie: 4-bit Set5 PSNR (lead 0.04 dB); 4-bit Set14 PSNR (lead 0.05 dB)." in md

    assert main(["table", "--run", str(run), "--significance", "--format", "latex"]) == 0
    latex = capsys.readouterr().out
    assert r"MinMax & 4 & 31.88 & 0.9000 & 31.95$^\dagger$ & 0.9000 \\" in latex

    assert main(["table", "--run", str(run), "--significance", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("Set14 SSIM,Set5 Wilcoxon p,Set14 Wilcoxon p")
    csv_rows = {line.split(",")[2]: line.split(",") for line in lines[1:]}
    assert csv_rows["MinMax"][-2:] == ["n/a", f"{p_minmax:.4g}"]
    assert csv_rows["Percentile"][-2:] == ["n/a", f"{p_percentile:.4g}"]
    assert csv_rows["DOBI"][-2:] == ["tie", "tie"]
    assert csv_rows["FP"][-2:] == ["", ""]


def test_without_the_flag_tables_are_unchanged(tmp_path):
    run = _write_run(tmp_path, _records())
    records = read_records(run / "records.jsonl")
    plain = render(build_tables(records), "md")
    assert "†" not in plain and "Wilcoxon" not in plain
    assert "Wilcoxon" not in render(build_tables(records), "csv").splitlines()[0]


def test_batched_tests_equal_one_scipy_call_per_pair():
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(30, 2, 8).tolist(), rng.normal(30, 2, 8).tolist()) for _ in range(5)]
    zero = rng.normal(30, 2, 9)
    pairs.append((zero.tolist(), (zero - np.r_[0.0, rng.uniform(0.1, 1, 8)]).tolist()))      # one zero difference
    tie = rng.normal(30, 2, 7)
    pairs.append((tie.tolist(), (tie - np.array([0.5, -0.5, 0.25, 1, 2, 3, 4])).tolist()))  # tied magnitudes
    pairs += [(rng.normal(30, 2, 60).tolist(), rng.normal(30, 2, 60).tolist()) for _ in range(3)]  # normal approx
    for (best, other), (statistic, p) in zip(pairs, wilcoxon_many(pairs)):
        alone = wilcoxon(best, other)
        assert (statistic, p) == (float(alone.statistic), float(alone.pvalue))
