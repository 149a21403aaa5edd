"""Reconstruction PTQ (issue 10): the learned-rounding quantizer type, AdaRound / BRECQ / QDrop, save/load, export,
the runner and the CLI. Small crops and few iterations: every test runs in seconds on one thread."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench.cli import main
from bench.errors import ConfigError
from bench.export.packed import load_packed, save_packed, weight_codes
from bench.quant import FakeQuantizer, make_quantizer, quantizers, weight_quantizers
from bench.quant.io import load_quantized, save_quantized
from bench.quant.pipeline import CalibContext, quantize_with_method
from bench.quant.rounding import LearnedRoundingQuantizer, rectified_sigmoid
from bench.runner.execute import RunOptions, run_matrix
from bench.runner.matrix import load_matrix
from bench.runner.records import read_records
from methods import create_method
from methods.reconstruction import plan_units
from models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 3, 3, padding=1)).eval()


def _batch(n: int = 8, size: int = 12) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _quantize(model: nn.Module, method: str, calib: torch.Tensor, bits: int = 4, seed: int = 0, **params):
    m = create_method(method, **params)
    qmodel, _ = quantize_with_method(model, m, bits, bits, CalibContext(calib_batch=calib, seed=seed, progress=False),
                                     scope="ptq4sr")
    return qmodel, m


# ------------------------------------------------------------------------------------- the quantizer type

@pytest.mark.parametrize("per_channel", [False, True])
def test_learned_rounding_reproduces_the_uniform_quantizer(per_channel):
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    kw = {"per_channel_axis": 0, "channels": 16} if per_channel else {}
    lo = w.amin(dim=(1, 2, 3)) * 0.7 if per_channel else w.min() * 0.7
    hi = w.amax(dim=(1, 2, 3)) * 0.6 if per_channel else w.max() * 0.6
    uniform = FakeQuantizer(3, "weight", **kw)
    uniform.set_bounds(lo, hi)
    learned = make_quantizer("learned-rounding", uniform)
    learned.set_bounds(lo, hi)
    uniform.eval(), learned.eval()
    with torch.no_grad():
        expected = uniform(w)
        assert torch.equal(learned(w), expected)  # nearest: the uniform quantizer's numbers
        learned.init_soft(w)
        q, _, _ = learned._scaled(w)
        learned.alpha.copy_(torch.where(torch.round(q) > torch.floor(q), 1.0, -1.0))  # h = round-up indicator
        learned.harden()
        assert torch.equal(learned(w), expected)  # spec 2.3's float32 op order, bit for bit
        assert torch.equal(learned.codes(w), uniform.codes(w))
        assert torch.equal(weight_codes(learned, w), weight_codes(uniform, w))
        # The eval-mode weight cache is keyed on the rounding choice too.
        learned.round_up[0, 0, 0, 0] = ~learned.round_up[0, 0, 0, 0]
        assert not torch.equal(learned(w), expected)


def test_soft_rounding_starts_at_the_clipped_weight_and_harden_is_binary():
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    q = LearnedRoundingQuantizer(4)
    q.set_bounds(-1.0, 1.0)
    q.init_soft(w)
    soft = q(w)
    assert torch.allclose(soft, w.clamp(-1, 1), atol=1e-4 * 2 / 15)  # h(V) = frac(w/s) up to the 1e-4 guard
    assert q.mode == "soft" and float(rectified_sigmoid(torch.tensor(10.0))) == 1.0
    q.harden()
    assert q.mode == "hard" and q.round_up.dtype == torch.bool and q.alpha is None


# ------------------------------------------------------------------------------------- AdaRound on a toy CNN

def test_adaround_hardens_to_binary_and_weights_on_the_grid():
    model, batch = _toy(), _batch()
    qmodel, method = _quantize(model, "adaround", batch, iters=400, batch=8, lr=0.05)
    reports = method.recon.reports
    assert len(reports) == 3
    for r in reports:
        assert r.soft_fraction_binary >= 0.99, r   # h(V) within 0.01 of 0 or 1 at the end of optimisation
        assert r.learned < r.nearest_after, r      # same bounds: learned rounding beats nearest
    for _, q, w in weight_quantizers(qmodel):
        assert isinstance(q, LearnedRoundingQuantizer) and q.mode == "hard"
        with torch.no_grad():
            wq = q(w)
        lower = q._broadcast(q.lower.detach(), w)
        step = q._broadcast((q.upper - q.lower).detach() / q.levels, w)
        k = (wq - lower) / step
        assert torch.allclose(k, torch.round(k), atol=1e-3) and k.min() >= -1e-3 and k.max() <= q.levels + 1e-3
        assert torch.equal(q.codes(w), torch.round(k))
        flips = (q.codes(w) != FakeQuantizer.codes(q, w)).float().mean()
        assert flips > 0  # some weights round the other way than nearest


def test_save_load_and_packed_round_trip_are_exact(tmp_path):
    model, batch = _toy(), _batch()
    qmodel, _ = _quantize(model, "adaround", batch, iters=30, batch=4, lr=0.05)
    x = _batch(2, 16)
    with torch.no_grad():
        expected = qmodel(x)
    path = save_quantized(qmodel, tmp_path / "q.pt")
    loaded = load_quantized(path, model).eval()
    assert [q.quant_type for _, q in quantizers(loaded)].count("learned-rounding") == 3
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    save_packed(qmodel, tmp_path / "q.safetensors")
    unpacked = load_packed(tmp_path / "q.safetensors", _toy()).eval()
    with torch.no_grad():
        assert torch.equal(unpacked(x), expected)


def test_qdrop_with_p0_equals_brecq_with_the_same_seed():
    model, batch = _toy(), _batch()
    x = _batch(2, 16)
    outs = []
    for name, extra in (("brecq", {}), ("qdrop", {"drop": 0.0}), ("qdrop", {"drop": 0.5})):
        qmodel, _ = _quantize(model, name, batch, seed=3, iters=20, batch=4, lr=0.05, lr_act=1e-3, **extra)
        with torch.no_grad():
            outs.append(qmodel(x))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])  # the drop changes the result


def test_brecq_fisher_loss_weights_the_error_and_beats_nearest():
    model, batch = _toy(), _batch()
    qmodel, method = _quantize(model, "brecq", batch, iters=40, batch=4, lr=0.05, loss="fisher")
    _, mse = _quantize(model, "brecq", batch, iters=40, batch=4, lr=0.05)
    fisher_reports, mse_reports = method.recon.reports, mse.recon.reports
    assert all(r.learned < r.nearest_after for r in fisher_reports), fisher_reports
    # The (|g| + 1)^2 weights are >= 1 and not all 1: on the first unit (same input, bounds and rounding in both
    # runs) the Fisher loss exceeds the plain one.
    assert fisher_reports[0].nearest_before > mse_reports[0].nearest_before


def test_bad_parameters_are_config_errors():
    with pytest.raises(ConfigError, match="warmup=1.5 must be in"):
        create_method("brecq", warmup=1.5)
    with pytest.raises(ConfigError, match="drop=1.0 must be in"):
        create_method("qdrop", drop=1.0)
    with pytest.raises(ConfigError, match="init='nosuch' is not a registered range method; use one of .*dobi"):
        create_method("adaround", init="nosuch")


# ------------------------------------------------------------------------------------- real models

def test_brecq_beats_nearest_on_every_imdn_unit(weights_dir, train_root):
    from bench.data.calib import calibration_batch

    fp = create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")
    batch = calibration_batch(train_root, 2, n=4, patch=24, seed=0)
    qmodel, method = _quantize(fp, "brecq", batch, iters=30, batch=4, lr=0.02)
    reports = method.recon.reports
    names = [r.name for r in reports]
    assert names[:2] == ["fea_conv", "IMDB1"] and "IMDB6" in names and names[-1] == "upsampler.0"
    assert all(r.learned < r.nearest_after for r in reports), [(r.name, r.learned, r.nearest_after) for r in reports]


def test_brecq_units_of_swinir_light_are_swin_blocks_and_beat_nearest():
    fp = create_model("swinir-light", 2)  # shipped weights
    batch = _batch(2, 16)
    qmodel, method = _quantize(fp, "brecq", batch, iters=15, batch=2, lr=0.02)
    reports = method.recon.reports
    blocks = [r for r in reports if ".residual_group.blocks." in r.name]
    assert len(blocks) == 24 and blocks[0].name == "layers.0.residual_group.blocks.0"
    assert all(r.learned < r.nearest_after for r in blocks), [(r.name, r.learned, r.nearest_after) for r in blocks]
    units = plan_units(qmodel, batch[:1], blockwise=True)
    assert units[0].name == "conv_first" and not units[0].blockwise


def test_adaround_is_layer_wise_inside_window_attention():
    # qkv and proj see windows x samples rows, not samples: each layer is still a unit
    fp = create_model("swinir-light", 2, weights="random")
    qmodel, method = _quantize(fp, "adaround", _batch(2, 16), iters=2, batch=1, lr=0.05)
    names = [r.name for r in method.recon.reports]
    block = [n.removeprefix("layers.0.residual_group.blocks.0.") for n in names
             if n.startswith("layers.0.residual_group.blocks.0.")]
    assert block == ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]  # the ptq4sr scope quantizes no BMM
    assert all(q.mode == "hard" for _, q, _ in weight_quantizers(qmodel) if isinstance(q, LearnedRoundingQuantizer))


# ------------------------------------------------------------------------------------- runner and CLI

RECON = """\
name: recon
models:
  - {name: imdn, scales: [2], weights: "imdn/IMDN_x{scale}.pth"}
datasets:
  - {name: Set5, crop: 24, max_images: 2}
bits: [4]
methods:
  - {name: adaround, params: {iters: 2, batch: 2}}
  - {name: brecq, params: {iters: 2, batch: 2}}
  - {name: qdrop, params: {iters: 2, batch: 2}}
baselines: []
calibration: {n: 2, patch: 24, seed: 0}
latency: {runs: 1, lr_size: 16}
cost: {lr_size: 16}
"""


def test_the_three_methods_run_as_matrix_cells(tmp_path, benchmark_root, weights_dir, train_root):
    matrix = tmp_path / "recon.yaml"
    matrix.write_text(RECON, encoding="utf-8")
    stats = run_matrix(load_matrix(matrix), RunOptions(out=tmp_path / "r", data_root=benchmark_root,
                                                       weights_dir=weights_dir, train_root=train_root,
                                                       progress=False))
    assert (stats.computed, stats.errors) == (3, 0)
    records = read_records(tmp_path / "r" / "records.jsonl")
    assert sorted(r["method"] for r in records) == ["adaround", "brecq", "qdrop"]
    for r in records:
        assert r["status"] == "ok" and r["psnr"] > 20, r
        assert r["params"] and r["method_params"]["iters"] == 2


def test_methods_list_shows_them(capsys):
    assert main(["methods", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("adaround", "brecq", "qdrop"):
        assert name in out
    assert "lr_act" in out and "drop" in out and "20000" in out


@pytest.mark.parametrize("model_name", ["bsrn", "carn-m", "fsrcnn", "imdn", "imdn-ntire", "imdtn", "rfdn", "rlfn",
                                        "swinir-light"])
def test_brecq_runs_on_every_registered_model_and_hardens_every_weight(model_name):
    # Issue 10: the block methods run on every registered model whose units are exposed (random weights, one
    # iteration per unit: this checks the plumbing, the value tests above check the optimisation).
    from bench.quant import quantizers
    from bench.quant.pipeline import CalibContext, quantize_with_method
    from bench.quant.rounding import LearnedRoundingQuantizer
    from methods.registry import create_method
    from models import create_model
    from models.registry import get_entry

    torch.manual_seed(0)
    scale = get_entry(model_name).scales[0]
    fp = create_model(model_name, scale, weights="random")
    batch = torch.rand(2, 3, 16, 16)
    qmodel, _ = quantize_with_method(fp, create_method("brecq", iters=1, batch=1, init="minmax"), 4, 4,
                                     CalibContext(calib_batch=batch, progress=False))
    weights = [q for _, q in quantizers(qmodel) if q.is_weight]
    assert weights and all(isinstance(q, LearnedRoundingQuantizer) and q.mode == "hard" for q in weights)
