"""`bench quantize --bits mixed:B` and `bench sensitivity` end to end on IMDN x2 (random weights, tiny patches)."""
from __future__ import annotations

import json

import pytest
import torch

from bench.cli import main
from bench.cost import analyze
from bench.mixed.allocate import CostTable, candidate_pairs
from bench.quant import load_quantized, quantizers
from models import create_model

SMALL = ["--calib-n", "4", "--calib-patch", "16", "--threads", "1"]


@pytest.fixture(autouse=True)
def no_compiler(monkeypatch):
    # Tiny patches: the compiled fake-quant pass would spend the test's time compiling, not computing.
    monkeypatch.setenv("BENCH_FUSED_FAKE_QUANT", "0")


@pytest.fixture(scope="module")
def calib_dir():
    from bench.data.sample import sample_train_dir
    return sample_train_dir()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "imdn_x2.pth"
    torch.save(create_model("imdn", 2, weights="random").state_dict(), path)
    return path


def test_quantize_mixed_allocates_within_the_budget_and_records_the_bits(tmp_path, calib_dir, weights, capsys):
    out = tmp_path / "mixed.pt"
    code = main(["quantize", "--model", "imdn", "--scale", "2", "--weights", str(weights), "--method", "minmax",
                 "--bits", "mixed:4", "--scope", "ptq4sr", "--mixed-candidates", "2,8", "--calib", str(calib_dir),
                 *SMALL, "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "mixed4-c2.8: 44 layers allocated" in printed
    fp_model = create_model("imdn", 2, weights=str(weights))
    qmodel = load_quantized(out, fp_model)
    mixed = qmodel.quant_meta["mixed"]
    assert mixed["spec"] == {"like": 4, "candidates": [[2, 2], [8, 8]], "criterion": "mse",
                             "context": "context", "refine": 0}
    assert mixed["score_patches"].startswith("calib split, seed 1")  # sample-train has 9 images: no val split
    chosen = {path: tuple(bits) for path, bits in mixed["layer_bits"].items()}
    assert qmodel.quant_config.bits_map() == chosen and len(chosen) == 44
    assert set(chosen.values()) == {(2, 2), (8, 8)}  # W4A4's budget: some layers at 8 bits, others at 2
    for name, q in quantizers(qmodel):
        layer = name.rsplit(".", 1)[0]
        expected = chosen.get(layer, (8, 8))  # the edge convs keep ptq4sr's 8 bits
        assert q.bits == (expected[0] if q.is_weight else expected[1])
    report = analyze(fp_model, "imdn", 2, qmodel)
    budget = CostTable(fp_model, "imdn", 2, "ptq4sr", candidate_pairs([2, 8])).budget_like(4)
    assert report.size_bytes == mixed["size_bytes"] <= budget.size_bytes == mixed["budget"]["size_bytes"]
    assert report.bops("paper") <= budget.bops


def test_sensitivity_command_writes_table_chart_and_json(tmp_path, calib_dir, weights, capsys):
    out = tmp_path / "sens"
    code = main(["sensitivity", "--model", "imdn", "--scale", "2", "--weights", str(weights), "--method", "minmax",
                 "--scope", "ptq4sr", "--candidates", "2,8", "--context", "alone", "--calib", str(calib_dir),
                 "--score-n", "4", *SMALL, "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    data = json.loads((out / "sensitivity.json").read_text())
    assert len(data["layers"]) == 44 and data["settings"]["candidates"] == [[2, 2], [8, 8]]
    assert all(row["w2a2"] > row["w8a8"] for row in data["scores"].values())
    assert (out / "sensitivity.png").stat().st_size > 20_000 and (out / "sensitivity.pdf").is_file()
    assert ["layer", "w2a2", "w8a8"] in [line.split() for line in printed.splitlines()]
    main(["sensitivity", "--model", "imdn", "--scale", "2", "--weights", str(weights), "--method", "minmax",
          "--scope", "ptq4sr", "--candidates", "2,8", "--context", "alone", "--calib", str(calib_dir),
          "--score-n", "4", *SMALL, "--out", str(out)])
    assert "layers, cached ->" in capsys.readouterr().out


def test_bad_mixed_bits_are_one_line_errors(tmp_path, calib_dir, capsys):
    for bits, message in (("mixed:x", "write mixed:B"), ("mixed:9", "like: 9")):
        code = main(["quantize", "--model", "imdn", "--scale", "2", "--weights", "random", "--method", "minmax",
                     "--bits", bits, "--calib", str(calib_dir), "--out", str(tmp_path / "q.pt")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------- a matrix with a mixed cell

MIXED_MATRIX = """\
name: mixed
models: [{name: fsrcnn, scales: [2], weights: shipped, scope: ptq4sr}]
datasets: [{name: sample, crop: 24, max_images: 2}]
bits: [4, {mixed: {like: 4, candidates: [2, 8], criterion: mse, refine: 1}}]
methods: [emmse]
calibration: {n: 2, patch: 24, seed: 0, train_dir: sample-train}
latency: {runs: 0}
cost: {lr_size: 16}
"""


def test_a_matrix_mixed_cell_records_its_per_layer_bits_within_the_uniform_budget(tmp_path, capsys):
    from bench.runner.execute import RunOptions, run_matrix
    from bench.runner.matrix import load_matrix
    from bench.runner.records import read_records
    path = tmp_path / "mixed.yaml"
    path.write_text(MIXED_MATRIX, encoding="utf-8")
    run_matrix(load_matrix(path), RunOptions(out=tmp_path / "run", progress=False))
    records = {r["key"]: r for r in read_records(tmp_path / "run" / "records.jsonl")}
    uniform = records["fsrcnn/x2/emmse/W4A4/sample[crop24,n2]"]
    mixed = records["fsrcnn/x2/emmse/mixed4-r1-c2.8/sample[crop24,n2]"]
    assert mixed["status"] == uniform["status"] == "ok"
    chosen = mixed["method_description"]["mixed"]
    assert set(map(tuple, chosen["layer_bits"].values())) <= {(2, 2), (8, 8)} and len(chosen["layer_bits"]) == 6
    assert mixed["model_size_bytes"] == chosen["size_bytes"] <= uniform["model_size_bytes"]
    assert chosen["budget"]["size_bytes"] == uniform["model_size_bytes"]
    assert mixed["psnr"] != uniform["psnr"]
    capsys.readouterr()
    assert main(["table", "--run", str(tmp_path / "run"), "--no-deployment"]) == 0
    rows = [line.split("|")[1:3] for line in capsys.readouterr().out.splitlines() if line.startswith("| EMMSE")]
    assert [bits.strip() for _, bits in rows] == ["4", "mixed4-r1-c2.8"]  # the mixed cell right after its budget's


def test_the_committed_demo_mixed_cell_fits_uniform_w4a4_and_beats_uniform_dobi():
    """The demo's mixed DOBI cell (matrices/demo.yaml, issue 25), as committed in results/reference/demo-run:
    within the cost-model size and BOPs of uniform W4A4, packed to exactly its cost-model size plus the header,
    and 0.25 dB over uniform DOBI on the sample photos."""
    from pathlib import Path

    from bench.runner.records import read_records
    run = Path(__file__).resolve().parents[1] / "results" / "reference" / "demo-run" / "records.jsonl"
    records = {r["key"]: r for r in read_records(run)}
    uniform = records['rlfn-s/x2/dobi{"variant":"paper"}/W4A4/sample']
    mixed = records['rlfn-s/x2/dobi{"variant":"paper"}/mixed4/sample']
    chosen = mixed["method_description"]["mixed"]
    assert chosen["budget"] == {"size_bytes": uniform["model_size_bytes"], "bops": chosen["budget"]["bops"],
                                "label": "w4a4"}
    assert mixed["model_size_bytes"] == chosen["size_bytes"] == 88552 <= uniform["model_size_bytes"] == 90024
    assert chosen["bops"] <= chosen["budget"]["bops"]
    assert mixed["packed_size_bytes"] - mixed["packed_header_bytes"] == mixed["model_size_bytes"]
    assert set(map(tuple, chosen["layer_bits"].values())) <= {(2, 2), (3, 3), (4, 4), (6, 6), (8, 8)}
    assert round(mixed["psnr"], 2) == 32.99 and round(uniform["psnr"], 2) == 32.73
