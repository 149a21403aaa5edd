"""`bench report`: the HTML page of a real smoke run, opened in headless Chromium, and of 5,000 synthetic records."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import shutil
import time
from html import escape
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.metrics.psnr_ssim import psnr_y
from bench.report.browser import check_page, find_chromium, screenshot
from bench.report.html import RunRecords, build_report
from bench.runner.records import read_records
from bench.runner.rundir import RunDir

CROP = "20,20,80,80"
NO_CHROMIUM = ("chromium not found: install Debian's chromium (`apt-get install -y chromium`; .ci/run does) to open "
               "the report in a headless browser")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, benchmark_root, weights_dir, train_root) -> Path:
    from bench.runner.execute import RunOptions, run_matrix
    from bench.runner.matrix import load_matrix
    out = tmp_path_factory.mktemp("report") / "smoke"
    run_matrix(load_matrix("smoke"), RunOptions(out=out, data_root=benchmark_root, weights_dir=weights_dir,
                                                train_root=train_root, progress=False))
    return out


@pytest.fixture(scope="module")
def smoke_page(smoke_run, benchmark_root) -> Path:
    out = smoke_run / "report.html"
    assert main(["report", "--run", str(smoke_run), "--image", "butterfly", "--crop", CROP, "--threads", "1",
                 "--data-root", str(benchmark_root)]) == 0        # default --out: <run>/report.html
    return out


def _table_cells(markdown: str) -> list[list[str]]:
    table3 = markdown.split("\n#### ")[0]  # the deployment table (size, latency) follows Table 3
    return [[c.strip().strip("*") for c in line.strip("|").split("|")] for line in table3.splitlines()
            if line.startswith("| ")][1:]


def _page_cell(html: str, row: str, column: str) -> str:
    match = re.search(rf'<td[^>]*data-row="{re.escape(row)}" data-col="{re.escape(column)}"[^>]*>([^<]*)', html)
    assert match, (row, column)
    return match.group(1)


def test_smoke_report_shows_every_psnr_as_bench_table_does(smoke_run, smoke_page, capsys):
    records = [r for r in read_records(smoke_run / "records.jsonl") if r["status"] == "ok"]
    assert len(records) == 4
    capsys.readouterr()
    assert main(["table", "--run", str(smoke_run)]) == 0
    table = _table_cells(capsys.readouterr().out)
    html = smoke_page.read_text(encoding="utf-8")
    # Method, Bits, Set5 (crop 64) PSNR, SSIM: each of the 4 records is one row of `bench table`.
    assert [row[0] for row in table] == ["FP", "Bicubic", "MinMax", "DOBI"]
    for method, bits, psnr, ssim in table:
        assert _page_cell(html, f"{method}|{bits}", "Set5[crop64]|psnr") == psnr
        assert _page_cell(html, f"{method}|{bits}", "Set5[crop64]|ssim") == ssim
    shown = {row[0]: row[2] for row in table}
    for record in records:
        name = {"fp": "FP", "bicubic": "Bicubic", "minmax": "MinMax", "dobi": "DOBI"}[record["label"]]
        assert shown[name] == f"{record['psnr']:.2f}"
    # Per-image table: every image's PSNR of every record.
    for record in records:
        for image in record["per_image"]:
            assert f'data-v="{float(image["psnr"])!r}">{image["psnr"]:.2f}</td>' in html
    # Set5 has 5 images: the Wilcoxon test is reported as not applicable, with no p-value.
    assert "not applicable (too few images)" in html
    assert "Not applicable (fewer than 6 paired images): Set5 (crop 64) (5 images)." in html


def test_smoke_report_references_no_external_url(smoke_page):
    html = smoke_page.read_text(encoding="utf-8")
    without_data = re.sub(r"data:[a-z/]+;base64,[A-Za-z0-9+/=]+", "data:", html)    # base64 holds "//"
    assert not re.search(r"https?:|ftp:|//[a-z0-9]", without_data, flags=re.I)
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith(("data:", "#")) for s in sources), sorted(set(s[:20] for s in sources))
    assert "@import" not in html and "url(" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_smoke_report_provenance_and_crop(smoke_run, smoke_page, weights_dir):
    html = smoke_page.read_text(encoding="utf-8")
    records = read_records(smoke_run / "records.jsonl")
    digest = hashlib.sha256((weights_dir / "imdn" / "IMDN_x2.pth").read_bytes()).hexdigest()
    assert html.count(f">{digest}</td>") == 3                       # FP, MinMax, DOBI (bicubic has no weights)
    assert f">{records[0]['git_commit'] or '–'}</td>" in html and f">{records[0]['torch_version']}</td>" in html
    dobi = next(r for r in records if r["label"] == "dobi")
    params = escape(json.dumps(dobi["method_description"]["params"], sort_keys=True))
    assert f"n=4, patch=32, seed=0; method {params}; {dobi['calib_seconds']:.1f} s" in html   # matrix + record
    assert '"K": 100' in json.dumps(dobi["method_description"]["params"])
    # The crop: HR, bicubic, FP and each method, 80x80 PNGs titled with the crop's PSNR (of the pixels shown) and
    # the whole image's PSNR from the records, each saying which it is.
    titles = re.findall(r'<figure><img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', html)
    crops = [np.asarray(Image.open(io.BytesIO(base64.b64decode(data)))) for data, _ in titles]
    assert all(crop.shape == (80, 80, 3) for crop in crops)
    crop = [psnr_y(c, crops[0], 0) for c in crops]
    image = {r["label"]: next(p["psnr"] for p in r["per_image"] if p["name"] == "butterfly") for r in records}
    assert [t for _, t in titles] == [
        "HR", f"Bicubic, crop {crop[1]:.2f} dB, image {image['bicubic']:.2f} dB",
        f"FP, crop {crop[2]:.2f} dB, image {image['fp']:.2f} dB",
        f"MinMax W4A4, crop {crop[3]:.2f} dB, image {image['minmax']:.2f} dB",
        f"DOBI W4A4, crop {crop[4]:.2f} dB, image {image['dobi']:.2f} dB"]
    assert crop[3] < crop[4] < crop[2]         # MinMax's 4-bit noise is visible in the crop, DOBI's less
    assert "image = the whole image, as in the tables" in html


@pytest.fixture(scope="module")
def chromium():
    if find_chromium() is None:
        pytest.skip(NO_CHROMIUM)


def test_smoke_report_opens_in_headless_chromium_without_javascript_error(smoke_run, smoke_page, chromium, tmp_path):
    check = check_page(smoke_page)
    assert check.console == [] and check.page_errors == ""
    assert check.status == "ready: 5 sortable tables, 1 charts"  # Table 3, deployment, significance, per-image, provenance
    # The page's own sort, clicked in the browser: the first PSNR column, best first.
    records = [r for r in read_records(smoke_run / "records.jsonl") if r["status"] == "ok"]
    names = {"fp": "FP", "bicubic": "Bicubic", "minmax": "MinMax", "dobi": "DOBI"}
    expected = ";".join(f"{names[r['label']]}={float(r['psnr'])!r}" for r in sorted(records, key=lambda r: -r["psnr"]))
    assert check_page(smoke_page, "#selftest").selftest == expected
    png = screenshot(smoke_page, tmp_path / "report.png", 1000, 1400)
    image = Image.open(png)
    assert image.size == (1000, 1400)
    assert 20_000 < png.stat().st_size < 3_000_000
    pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500        # text, charts and crops, not a blank page


def test_browser_check_reports_external_loads_and_script_errors(smoke_page, chromium, tmp_path):
    html = smoke_page.read_text(encoding="utf-8")
    leaky = tmp_path / "leaky.html"
    leaky.write_text(html.replace("</nav>", '</nav><img src="http://198.51.100.7/pixel.png">', 1), encoding="utf-8")
    check = check_page(leaky)
    assert "blocked load of http://198.51.100.7/pixel.png (img-src)" in check.page_errors
    assert any("violates the following Content Security Policy directive" in line for line in check.console)
    assert not check.ok
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("</nav>", "</nav><script>undefinedFunction();</script>", 1), encoding="utf-8")
    check = check_page(broken)
    assert "undefinedFunction is not defined" in check.page_errors
    assert any("Uncaught ReferenceError: undefinedFunction is not defined" in line for line in check.console)


def test_cli_screenshot_and_errors(smoke_run, chromium, tmp_path, capsys):
    png = tmp_path / "shot.png"
    assert main(["report", "--run", str(smoke_run), "--out", str(tmp_path / "r.html"), "--no-visual",
                 "--screenshot", str(png), "--window", "800x600"]) == 0
    assert Image.open(png).size == (800, 600)
    assert "page status: ready: 5 sortable tables, 1 charts" in capsys.readouterr().out
    assert main(["report", "--run", str(smoke_run), "--out", str(tmp_path / "r.html"), "--no-visual",
                 "--screenshot", str(png), "--window", "800"]) == 2
    assert "bench: error: bad --window '800'; use WIDTHxHEIGHT, e.g. --window 1280x1600" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- synthetic records

def synthetic_records(models: int, images: int = 8, seed: int = 0) -> list[dict]:
    """FP, bicubic and six methods at 4/3/2 bits, x2/x3/x4, five datasets: 300 records per model."""
    rng = random.Random(seed)
    cells = [("fp", 32), ("bicubic", None)] + [(m, b) for m in ("minmax", "percentile", "emmse", "ptq4sr", "dobi",
                                                                  "2dquant") for b in (4, 3, 2)]
    records = []
    for m in range(models):
        for scale in (2, 3, 4):
            for dataset in ("Set5", "Set14", "B100", "Urban100", "Manga109"):
                for method, bits in cells:
                    per = [{"name": f"img{i:03d}", "psnr": 30 + 3 * rng.random() - (8 - (bits or 8)) * 0.1,
                            "ssim": 0.8 + 0.1 * rng.random()} for i in range(images)]
                    records.append({
                        "key": f"net{m}/x{scale}/{method}/{bits}/{dataset}", "model": f"net{m}", "scale": scale,
                        "method": method, "label": method, "w_bits": bits, "a_bits": bits, "dataset": dataset,
                        "dataset_label": dataset, "status": "ok", "images": images,
                        "psnr": sum(p["psnr"] for p in per) / images, "ssim": sum(p["ssim"] for p in per) / images,
                        "per_image": per, "model_size_bytes": None if bits is None else 100_000 * bits,
                        "weights": None, "git_commit": "abc123", "torch_version": "2.14.1", "device": "cpu", "seed": 0})
    return records


def test_5000_records_report_in_under_10_seconds(tmp_path, capsys):
    from scipy.stats import wilcoxon
    records = synthetic_records(models=17)
    assert len(records) == 5100
    run = tmp_path / "big"
    run.mkdir()
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    start = time.perf_counter()
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "big.html"), "--threads", "1"]) == 0
    seconds = time.perf_counter() - start
    assert seconds < 10, f"{seconds:.1f} s for {len(records)} records"
    assert "(5100 cells, 51 tables," in capsys.readouterr().out
    # Every quantized record is tested against the best of its group (8 images each: all applicable) ...
    page = build_report([RunRecords(RunDir(run), records)], None)
    assert len(page.comparisons) == 17 * 3 * 5 * 18
    tested = [c for c in page.comparisons if c.p_value is not None]
    assert len(tested) == 17 * 3 * 5 * 15
    # ... and the batched tests give what one scipy call per pair gives.
    scores = {(r["model"], r["scale"], r["dataset"], r["label"], r["w_bits"]): [p["psnr"] for p in r["per_image"]]
              for r in records}
    for c in tested[::97]:
        best = scores[(c.model, c.scale, c.dataset, c.best_label, int(c.bits))]
        other = scores[(c.model, c.scale, c.dataset, c.label, int(c.bits))]
        assert c.p_value == float(wilcoxon(best, other).pvalue)


def test_several_runs_in_one_page_label_the_cells_they_share(tmp_path, capsys):
    runs = []
    for name, seed in (("first", 1), ("second", 2)):
        run = tmp_path / name
        run.mkdir()
        records = synthetic_records(models=1, images=3, seed=seed)[:20]      # x2 Set5: 20 cells
        (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        runs.append((run, records))
    out = tmp_path / "both.html"
    assert main(["report", "--run", str(runs[0][0]), "--run", str(runs[1][0]), "--out", str(out), "--threads", "1"]) == 0
    assert f"wrote {out} (40 cells, 1 tables," in capsys.readouterr().out
    html = out.read_text(encoding="utf-8")
    for (run, records) in runs:
        dobi = next(r for r in records if r["method"] == "dobi" and r["w_bits"] == 4)
        assert _page_cell(html, f"DOBI [{run.name}]|4", "Set5|psnr") in (f"{dobi['psnr']:.2f}",)
    # No saved SR images and no --image: the page says how to get a crop instead of recomputing models.
    assert "no crop chosen: this run saved no SR images" in html


def test_size_chart_shows_measured_packed_sizes_beside_the_cost_model(tmp_path):
    records = synthetic_records(models=1, images=3)[:20]                      # x2 Set5: FP, bicubic, 18 methods
    for r in records:
        if r["method"] == "dobi":
            r["packed_size_bytes"] = r["model_size_bytes"] + 1234             # as bench.export.measure records it
    html = build_report([RunRecords(RunDir(tmp_path), records)], None).html
    chart = re.search(r'<svg class="chart"[^>]*aria-label="Set5: PSNR vs model size">.*?</svg>', html, re.S).group(0)
    hollow = re.findall(r'<polygon [^>]*class="pt" fill="white" stroke="#9467bd" data-marker="v"[^>]*'
                        r'data-tip="([^"]*)"', chart, re.S)                   # DOBI's purple triangle, hollow
    assert len(hollow) == 3                                                   # DOBI at 4, 3 and 2 bits
    assert all("(measured file)" in tip for tip in hollow)
    assert "size 0.401 MB (measured file)" in " ".join(hollow)               # 4 bits: 400,000 + 1,234 bytes
    assert ">DOBI</text>" in chart and ">hollow: measured packed file</text>" in chart  # one entry per method
    assert "hollow markers" in html and "no measured file size" not in html


def test_unknown_run_is_one_line_error(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path / "nope"), "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"bench: error: no run '{tmp_path / 'nope'}'") and "\n" not in err


def test_report_does_not_depend_on_a_browser(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert find_chromium() is None
    from bench.report.browser import BrowserError
    with pytest.raises(BrowserError, match=r"no headless browser found .*apt-get install -y chromium"):
        check_page(tmp_path / "x.html")
