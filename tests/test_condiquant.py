"""CondiQuant as this project reads it (methods/condiquant.py).

On the shipped SwinIR-light x2 and a 2x3x16x16 random LR batch: every quantized linear (144: q, k, v, proj, fc1,
fc2 of 24 Swin blocks) keeps XW on the calibration activations within 1e-4 relative, measured here directly on
the captured X (not through the method's Gram matrices), and every transformed layer has a lower kappa(W). The
end-to-end method (transform + DOBI + 2 DQC steps) saves and loads bit-exactly with the rewritten weights.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import methods  # noqa: F401  (registers the built-in methods)
from bench.errors import ConfigError
from bench.quant import CalibContext, QuantConfig, load_quantized, quantize_model, quantize_with_method, save_quantized
from bench.quant.calibrate import capture_activations
from methods.condiquant import CondiQuant, condition_number, linear_layers, proximal_gradient, restore_outputs
from models import create_model

PGD_ITERS = 30  # the default is 100; 30 keeps the tests short and already meets every bound below


def lr_batch(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def swinir():
    return create_model("swinir-light", 2)


@pytest.fixture(scope="module")
def transformed(swinir):
    """(untouched quantized copy, transformed copy, method) on the test batch, transform stage only."""
    plain = quantize_model(swinir, QuantConfig(4, 4))
    qmodel = quantize_model(swinir, QuantConfig(4, 4))
    method = CondiQuant(pgd_iters=PGD_ITERS)
    method.layers = method.transform(qmodel, CalibContext(fp_model=swinir, calib_batch=lr_batch(), progress=False))
    return plain, qmodel, method


def captured_inputs(qmodel: nn.Module, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs = {}

    def keep(name, q, x):
        inputs[name] = x.reshape(-1, x.shape[-1]).double().clone()
    capture_activations(qmodel, batch, keep)
    return inputs


def test_xw_is_kept_within_1e4_and_kappa_falls_on_every_transformed_layer(transformed):
    plain, qmodel, method = transformed
    inputs = captured_inputs(plain, lr_batch())
    layers = dict(linear_layers(qmodel))
    assert len(method.layers) == 144
    done = [t for t in method.layers if t.transformed]
    assert len(done) >= 130  # measured: see docs/transformer-methods.md (a layer whose kappa would not fall is left alone)
    for record in method.layers:
        path = record.weight[:-len(".weight")]
        before = plain.get_submodule(path).weight.double()
        after = layers[path].weight.double()
        x = inputs[f"{path}.input_quant"]
        change = float((x @ (after - before).T).norm() / (x @ before.T).norm())
        assert change <= 1e-4, (path, change)
        if record.transformed:
            assert condition_number(after) < condition_number(before), path
            assert abs(change - record.rel_change) <= 1e-6
        else:
            assert torch.equal(after, before)
    assert sorted(qmodel.quant_rewritten) == sorted(t.weight for t in done)


def test_the_largest_condition_numbers_fall_by_an_order_of_magnitude(transformed):
    _, _, method = transformed
    worst = max(method.layers, key=lambda t: t.kappa_before)
    assert worst.kappa_before > 1000 and worst.kappa_after < worst.kappa_before / 10


def test_fp_model_is_untouched(swinir, transformed):
    _, qmodel, _ = transformed
    name = next(n for n in qmodel.quant_rewritten if ".qkv." not in n)  # the FP model's qkv is one fused linear
    assert not torch.equal(swinir.get_parameter(name), qmodel.get_parameter(name))


def test_proximal_step_keeps_the_mean_singular_value_and_restore_bounds_the_change():
    gen = torch.Generator().manual_seed(0)
    a0 = torch.randn(12, 8, generator=gen, dtype=torch.float64) * torch.logspace(0, 2, 8, dtype=torch.float64)
    x = torch.randn(200, 12, generator=gen, dtype=torch.float64) @ torch.diag(torch.logspace(0, -6, 12,
                                                                                             dtype=torch.float64))
    gram = x.T @ x
    a = proximal_gradient(a0, gram, rho=1.0, iters=50)
    restored, free = restore_outputs(a, a0, gram, tol=1e-4)
    change = float((x @ (restored - a0)).norm() / (x @ a0).norm())
    assert change <= 1e-4 and 0 < free < 12
    assert condition_number(restored) < condition_number(a0) / 2


def test_end_to_end_saves_and_loads_the_rewritten_weights_exactly(tmp_path, swinir):
    method = CondiQuant(pgd_iters=PGD_ITERS, iters=2, batch=2, patch=16)
    qmodel, _ = quantize_with_method(swinir, method, 4, 4, CalibContext(calib_batch=lr_batch(), progress=False))
    record = method.describe()
    assert record["transform"]["layers"] == 144 and record["transform"]["max_rel_change"] <= 1e-4
    assert record["dqc"]["settings"]["iters"] == 2
    path = save_quantized(qmodel, tmp_path / "condi.pt", {"method": "condiquant"})
    loaded = load_quantized(path, swinir)
    x = lr_batch(1, 16, seed=3)
    with torch.no_grad():
        assert torch.equal(qmodel(x), loaded(x))
    name = qmodel.quant_rewritten[0]
    assert torch.equal(loaded.get_parameter(name), qmodel.get_parameter(name))


def test_a_model_without_quantized_linears_is_refused_by_name():
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()
    with pytest.raises(ConfigError, match="nn.Linear"):
        quantize_with_method(cnn, CondiQuant(iters=0), 4, 4, CalibContext(calib_batch=lr_batch(), progress=False))


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="tol"):
        CondiQuant(tol=2.0)
    with pytest.raises(ConfigError, match="rho"):
        CondiQuant(rho=0.0)


def test_the_condiquant_reference_rows_load_under_registry_names():
    from pathlib import Path

    from bench.runner.tables import load_reference
    from methods.registry import get_method_class
    path = Path(__file__).resolve().parents[1] / "results" / "reference" / "condiquant-table3.csv"
    rows = {r.method: r for r in load_reference(path)}
    assert {m: rows[m].psnr for m in ("ptq4vit", "repq-vit", "noisyquant", "2dquant", "condiquant")} == \
        {"ptq4vit": 37.43, "repq-vit": 37.89, "noisyquant": 37.50, "2dquant": 37.87, "condiquant": 38.03}
    assert all(r.model == "swinirlight" and r.scale == 2 for r in rows.values())  # the FP row binds them
    for name in ("noisyquant", "condiquant", "2dquant"):
        get_method_class(name)


def test_bench_methods_list_shows_both_methods_with_their_parameters():
    import subprocess
    import sys
    from pathlib import Path
    result = subprocess.run([sys.executable, "-c", "import sys; from bench.cli import main; sys.exit(main())", "methods",
                             "list"], cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = {name: next(i for i, line in enumerate(lines) if line.startswith(name + " ")) for name in ("noisyquant",
                                                                                                    "condiquant")}
    assert "base: str = 'dobi'" in lines[start["noisyquant"]] and "NoisyQuant" in lines[start["noisyquant"]]
    condi = "\n".join(lines[start["condiquant"]:start["condiquant"] + 14])
    for param in ("rho: float = 0.01", "pgd_iters: int = 100", "tol: float = 0.0001", "iters: int | None = None"):
        assert param in condi, param


def test_bench_table_puts_the_condiquant_reference_rows_under_the_measured_ones():
    from pathlib import Path

    from bench.runner.tables import build_tables, load_reference, render
    reference = load_reference(Path(__file__).resolve().parents[1] / "results" / "reference" / "condiquant-table3.csv")

    def record(method, bits, psnr):
        tag = "FP" if bits == 32 else f"W{bits}A{bits}"
        return {"key": f"swinir-light/x2/{method}/{tag}/Set5", "fingerprint": "f", "run": "r", "model": "swinir-light",
                "scale": 2, "method": method, "label": method, "method_params": {}, "w_bits": bits, "a_bits": bits,
                "dataset": "Set5", "dataset_label": "Set5", "status": "ok", "error": None, "images": 5,
                "expected_images": 5, "is_subset": False, "crop": None, "psnr": psnr, "ssim": 0.9, "lpips": None,
                "per_image": [], "model_size_bytes": None, "latency_ms": None, "latency_fp_ms": None}
    records = [record("fp", 32, 35.156), record("noisyquant", 4, 35.149), record("condiquant", 4, 35.152)]
    text = render(build_tables(records, reference, deployment=False), "csv")
    rows = [line.split(",")[2:] for line in text.splitlines()[1:]]  # method, bits, reference, PSNR, SSIM
    names = [row[0] for row in rows]
    assert names == ["FP", "SwinIR-light FP (paper)", "NoisyQuant", "NoisyQuant (paper)", "CondiQuant",
                     "CondiQuant (paper)"]  # each paper row right under the measured row it belongs to
    assert [row[3] for row in rows] == ["35.16", "38.15", "35.15", "37.50", "35.15", "38.03"]
