"""A third-party method as a plugin: examples/my_method.py through the CLI and quantize_with_method."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bench.quant import CalibContext, quantize_with_method, quantizers, weight_quantizers

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "my_method.py"
CLI = "import sys; from bench.cli import main; sys.exit(main())"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.fixture
def plugin_method():
    import bench.plugins
    from methods.registry import METHOD_REGISTRY, create_method
    bench.plugins.load_plugin(EXAMPLE)
    yield create_method
    # Keep the registry of the rest of the test session as it was.
    METHOD_REGISTRY.pop("absmax-symmetric", None)
    bench.plugins._LOADED.discard(EXAMPLE.resolve())


def test_cli_lists_the_plugin_method_with_its_params():
    result = run_cli("--plugin", str(EXAMPLE), "methods", "list")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("absmax-symmetric"))
    assert "shrink: float = 1.0" in line and "Symmetric bounds" in line
    for builtin in ("minmax", "percentile", "emmse", "dobi"):
        assert any(row.startswith(builtin + " ") for row in result.stdout.splitlines())


def test_cli_reports_a_missing_plugin_on_one_line():
    result = run_cli("--plugin", "no_such_plugin.py", "methods", "list")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "no_such_plugin.py" in result.stderr


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 3, 3, padding=1)).eval()


def test_plugin_method_runs_end_to_end(plugin_method):
    model = tiny_cnn()
    batch = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    method = plugin_method("absmax-symmetric")
    qmodel, seconds = quantize_with_method(model, method, 4, 4, CalibContext(calib_batch=batch, progress=False))
    assert qmodel.quant_scope == "ptq4sr" and len(quantizers(qmodel)) == 6  # 3 convs x (weight + input)
    # ptq4sr scope: per-output-channel conv weights -> -max|w_c|, max|w_c| per channel
    name, q, weight = weight_quantizers(qmodel)[1]
    assert name == "2.weight_quant" and q.bits == 4
    expected = weight.detach().abs().amax(dim=(1, 2, 3))
    assert torch.equal(q.upper.detach(), expected) and torch.equal(q.lower.detach(), -expected)
    # the input of the first conv is the batch itself
    first_input = qmodel.get_submodule("0.input_quant")
    assert first_input.bits == 8 and first_input.upper.item() == float(batch.abs().max())
    assert qmodel.quant_method == {"name": "absmax-symmetric", "params": {"shrink": 1.0}}
    with torch.no_grad():
        assert torch.isfinite(qmodel(batch)).all()


def test_plugin_method_per_tensor_weight_bounds(plugin_method):
    model = nn.Sequential(nn.Linear(5, 7), nn.GELU(), nn.Linear(7, 2)).eval()
    batch = torch.rand(3, 3, 4, 5)  # the core does not care about the image shape for a Linear model
    ctx = CalibContext(calib_batch=batch, progress=False)
    qmodel, _ = quantize_with_method(model, plugin_method("absmax-symmetric", shrink=0.5), 3, 3, ctx, scope="ptq4sr")
    _, q, weight = weight_quantizers(qmodel)[0]
    bound = 0.5 * float(weight.abs().max())
    assert (q.lower.item(), q.upper.item()) == pytest.approx((-bound, bound), rel=1e-7)


PLUGIN_MATRIX = """
name: plugin
models:
  - {name: imdn, scales: [2], weights: "imdn/IMDN_x{scale}.pth"}
datasets:
  - {name: Set5, crop: 16, max_images: 1}
bits: [8]
methods: [{name: absmax-symmetric, params: {shrink: 0.9}}]
baselines: [fp]
calibration: {n: 2, patch: 16, seed: 0}
latency: {runs: 0}
"""


def test_a_matrix_runs_a_plugin_method(tmp_path, benchmark_root, weights_dir, train_root):
    import json
    matrix = tmp_path / "plugin.yaml"
    matrix.write_text(PLUGIN_MATRIX, encoding="utf-8")
    out = tmp_path / "run"
    result = run_cli("--plugin", str(EXAMPLE), "run", "--matrix", str(matrix), "--out", str(out),
                     "--data-root", str(benchmark_root), "--weights-dir", str(weights_dir), "--calib", str(train_root),
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    records = {r["method"]: r for r in map(json.loads, (out / "records.jsonl").read_text().splitlines())}
    plugin, fp = records["absmax-symmetric"], records["fp"]
    assert plugin["status"] == "ok" and plugin["method_params"] == {"shrink": 0.9} and plugin["w_bits"] == 8
    # Symmetric 8-bit bounds shrunk by 0.9 clip the outliers: a loss against FP, but not a collapse.
    assert 20.0 < plugin["psnr"] < fp["psnr"]
    # Without --plugin the same matrix is refused at validation, naming the method.
    refused = run_cli("run", "--matrix", str(matrix), "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and "unknown method 'absmax-symmetric'" in refused.stderr
