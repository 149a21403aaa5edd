"""NoisyQuant (methods/noisyquant.py) and the core's `noisy` quantizer type (bench/quant/noisy.py).

`noise=fixed` on the shipped SwinIR-light x2 and a 2x3x16x16 random LR batch: the 24 post-GELU fc2 inputs get a
noisy bias, the fc2 biases absorb W N, so with every quantizer off the model is the FP model (max |diff| <= 1e-5),
and a saved file reproduces the quantized output bit for bit. `noise=searched` (the default, the authors' code):
every Linear's calibration output MSE is at or below both no noise and `fixed` (issue 26's acceptance).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import methods  # noqa: F401  (registers the built-in methods)
from bench.errors import ConfigError
from bench.quant import CalibContext, load_quantized, quantize_with_method, quantizers, save_quantized
from bench.quant.noisy import NoisyFakeQuantizer
from bench.quant.quantizer import ACT_GELU
from bench.quant.surgery import set_quant_enabled
from methods import create_method
from methods.dobi import DOBI
from methods.noisyquant import NoisyQuant
from models import create_model


def lr_batch(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def swinir():
    return create_model("swinir-light", 2)


@pytest.fixture(scope="module")
def noisy_swinir(swinir):
    ctx = CalibContext(calib_batch=lr_batch(), progress=False)
    method = NoisyQuant(noise="fixed")
    qmodel, _ = quantize_with_method(swinir, method, 4, 4, ctx)
    return qmodel, method


def noisy_quantizers(qmodel):
    return [(n, q) for n, q in quantizers(qmodel) if isinstance(q, NoisyFakeQuantizer)]


def test_noise_sits_on_every_post_gelu_input_within_half_a_step(noisy_swinir):
    qmodel, method = noisy_swinir
    noisy = noisy_quantizers(qmodel)
    assert len(noisy) == 24 and all(q.kind == ACT_GELU and name.endswith("fc2.input_quant") for name, q in noisy)
    for name, q in noisy:
        step = method.noised[name]
        assert q.noise.numel() == 120 and step > 0  # SwinIR-light's MLP hidden width
        assert q.noise.abs().max() <= step / 2 and q.noise.abs().max() > step / 4  # U(-s/2, s/2), 120 draws
    assert len(qmodel.quant_rewritten) == 24 and all(n.endswith("fc2.bias") for n in qmodel.quant_rewritten)
    assert method.describe()["noised"]["quantizers"] == 24


def test_bias_correction_cancels_the_noise_without_quantization(swinir, noisy_swinir):
    qmodel, _ = noisy_swinir
    x = lr_batch(1, 16, seed=5)
    with torch.no_grad():
        reference = swinir(x)
        set_quant_enabled(qmodel, False)
        try:
            cancelled = qmodel(x)
            saved = [q.noise.clone() for _, q in noisy_quantizers(qmodel)]
            for _, q in noisy_quantizers(qmodel):  # the bias correction alone, without the noise it cancels
                q.noise.zero_()
            uncancelled = qmodel(x)
            for (_, q), noise in zip(noisy_quantizers(qmodel), saved):
                q.noise.copy_(noise)
        finally:
            set_quant_enabled(qmodel, True)
    assert (cancelled - reference).abs().max() <= 1e-5
    assert (uncancelled - reference).abs().max() > 1e-4  # the rewritten biases do matter


def test_fp_model_is_untouched(swinir, noisy_swinir):
    qmodel, _ = noisy_swinir
    name = qmodel.quant_rewritten[0]
    assert not torch.equal(swinir.get_parameter(name), qmodel.get_parameter(name))


def test_bounds_are_calibrated_on_the_noisy_activation(swinir, noisy_swinir):
    qmodel, _ = noisy_swinir
    dobi, _ = quantize_with_method(swinir, DOBI(), 4, 4, CalibContext(calib_batch=lr_batch(), progress=False))
    plain = dict(quantizers(dobi))
    changed = 0
    for name, q in quantizers(qmodel):
        if q.is_weight:  # weights are not touched: the same bounds as DOBI alone
            assert torch.equal(q.lower, plain[name].lower) and torch.equal(q.upper, plain[name].upper)
        elif isinstance(q, NoisyFakeQuantizer):
            changed += not (torch.equal(q.lower, plain[name].lower) and torch.equal(q.upper, plain[name].upper))
    assert changed >= 20  # DOBI's search on x + N lands elsewhere for (nearly) all of the 24


def test_save_load_reproduces_the_quantized_output_exactly(tmp_path, swinir, noisy_swinir):
    qmodel, _ = noisy_swinir
    path = save_quantized(qmodel, tmp_path / "noisy.pt", {"method": "noisyquant"})
    loaded = load_quantized(path, swinir)
    x = lr_batch(1, 16, seed=7)
    with torch.no_grad():
        expected, got = qmodel(x), loaded(x)
    assert len(noisy_quantizers(loaded)) == 24
    assert torch.equal(expected, got)


def test_the_seed_fixes_the_noise(swinir):
    def noise(seed: int) -> torch.Tensor:
        qmodel, _ = quantize_with_method(swinir, NoisyQuant(noise="fixed", seed=seed, base="minmax"), 4, 4,
                                         CalibContext(calib_batch=lr_batch(1), progress=False))
        return noisy_quantizers(qmodel)[0][1].noise
    assert torch.equal(noise(3), noise(3)) and not torch.equal(noise(3), noise(4))


# ------------------------------------------------------------------------------------------------ CNNs

def tiny_cnn(padding: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=padding), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=padding),
                         nn.ReLU(), nn.Conv2d(8, 4, 1, groups=2)).eval()


def test_a_cnn_has_no_linear_nor_post_gelu_input_and_is_refused_by_name():
    with pytest.raises(ConfigError, match="targets=linear: .* no quantized Linear layer.*targets=all"):
        quantize_with_method(tiny_cnn(1), NoisyQuant(), 4, 4, CalibContext(calib_batch=lr_batch(), progress=False))
    with pytest.raises(ConfigError, match="targets=gelu: .*act_gelu.*targets=all"):
        quantize_with_method(tiny_cnn(1), NoisyQuant(noise="fixed"), 4, 4,
                             CalibContext(calib_batch=lr_batch(), progress=False))


def test_targets_all_on_convs_cancels_exactly_without_padding_and_inside_with_it():
    x = lr_batch(1, 12, seed=2)
    for padding in (0, 1):
        model = tiny_cnn(padding)
        qmodel, _ = quantize_with_method(model, NoisyQuant(noise="fixed", targets="all", base="minmax"), 4, 4,
                                         CalibContext(calib_batch=lr_batch(), progress=False))
        assert len(noisy_quantizers(qmodel)) == 3  # every conv input, the grouped 1x1 included
        set_quant_enabled(qmodel, False)
        with torch.no_grad():
            diff = (qmodel(x) - model(x)).abs()
        if padding == 0:
            assert diff.max() <= 1e-5
        else:  # two zero-padded 3x3 convs: the outer 2 pixels see padded zeros without noise
            assert diff[..., 2:-2, 2:-2].max() <= 1e-5 and diff.max() > 1e-4


def test_a_target_without_bias_and_a_non_rule_base_are_config_errors():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False)).eval()
    with pytest.raises(ConfigError, match="has no bias"):
        quantize_with_method(model, NoisyQuant(targets="all"), 4, 4,
                             CalibContext(calib_batch=lr_batch(), progress=False))
    with pytest.raises(ConfigError, match="not a range-rule method"):
        quantize_with_method(tiny_cnn(1), NoisyQuant(targets="all", base="2dquant"), 4, 4,
                             CalibContext(calib_batch=lr_batch(), progress=False))


def test_a_saved_file_loads_in_a_process_that_imports_no_method(tmp_path, noisy_swinir):
    import subprocess
    import sys
    from pathlib import Path
    qmodel, _ = noisy_swinir
    path = save_quantized(qmodel, tmp_path / "noisy.pt", {"method": "noisyquant"})
    x = lr_batch(1, 16, seed=9)
    with torch.no_grad():
        torch.save(qmodel(x), tmp_path / "expected.pt")
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; from bench.quant import load_quantized; from models import create_model; "
            "q = load_quantized(sys.argv[1], create_model('swinir-light', 2)); x = torch.load(sys.argv[2]); "
            "print('methods' in sys.modules, torch.equal(q(x), torch.load(sys.argv[3])))")
    result = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.pt"), str(tmp_path / "expected.pt")],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "True"]  # the core alone knows the noisy type


def test_the_packed_export_keeps_the_noise_and_the_rewritten_biases(tmp_path):
    from bench.export.packed import load_packed, save_packed
    model = tiny_cnn(1)
    qmodel, _ = quantize_with_method(model, NoisyQuant(noise="fixed", targets="all", base="minmax"), 8, 8,
                                     CalibContext(calib_batch=lr_batch(), progress=False))
    save_packed(qmodel, tmp_path / "noisy.safetensors")
    loaded = load_packed(tmp_path / "noisy.safetensors", model)
    x = lr_batch(1, 12, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    assert len(noisy_quantizers(loaded)) == 3


# ------------------------------------------------------------------------------------- noise=searched (default)

def layer_errors(variants: dict[str, nn.Module], plain: nn.Module, batch: torch.Tensor, targets) -> dict[str, dict]:
    """Each target layer's calibration output MSE in every variant: the layer (quantizers on) against the FP layer,
    on the FP model's input to it (one capture of the plain model)."""
    from bench.quant.calibrate import capture_activations
    names = {t.quantizer_name for t in targets}
    inputs: dict[str, torch.Tensor] = {}
    capture_activations(plain, batch, lambda n, _q, x: inputs.__setitem__(n, x.clone()) if n in names else None)
    errors = {}
    with torch.no_grad():
        for t in targets:
            x = inputs[t.quantizer_name]
            set_quant_enabled(plain, False)
            try:
                reference = plain.get_submodule(t.layer_name)(x)
            finally:
                set_quant_enabled(plain, True)
            errors[t.layer_name] = {k: float((m.get_submodule(t.layer_name)(x) - reference).pow(2).mean())
                                    for k, m in variants.items()}
    return errors


@pytest.fixture(scope="module")
def searched_swinir(swinir, train_root):
    from bench.data.calib import calibration_batch
    batch = calibration_batch(train_root, 2, n=2, patch=16, seed=0)  # 2 real LR patches: 512 tokens per Linear

    def ctx():
        return CalibContext(calib_batch=batch, progress=False)
    method = NoisyQuant()
    searched, _ = quantize_with_method(swinir, method, 4, 4, ctx())
    none, _ = quantize_with_method(swinir, DOBI(), 4, 4, ctx())
    fixed, _ = quantize_with_method(swinir, NoisyQuant(noise="fixed", targets="linear"), 4, 4, ctx())
    return {"searched": searched, "none": none, "fixed": fixed}, method, batch


def test_searched_noise_is_never_worse_than_none_or_fixed_on_any_layer(searched_swinir):
    from methods.noisyquant import find_targets
    variants, method, batch = searched_swinir
    targets = find_targets(variants["none"], "linear")
    assert len(targets) == 144 and len(method.choices) == 144  # q, k, v, proj, fc1, fc2 of the 24 Swin blocks
    errors = layer_errors(variants, variants["none"], batch, targets)
    for name, e in errors.items():
        assert e["searched"] <= e["none"], (name, e)  # "none" is a candidate: equal when chosen, bit for bit
        # "fixed" is a candidate too; the fixed model's bounds come from its own capture, whose upstream inputs
        # differ by the float rounding of the cancelled noise: 7.5e-7 relative at most, measured
        assert e["searched"] <= e["fixed"] * (1 + 1e-5), (name, e)
    ratio = torch.tensor([e["searched"] / e["none"] for e in errors.values()])
    assert float(ratio.log().mean().exp()) < 0.99  # and it does lower the error on the whole
    counts = method.describe()["noised"]["choices"]
    assert sum(counts.values()) == 144 and counts["searched"] > counts["none"]
    assert method.describe()["noised"]["quantizers"] == 144 - counts["none"]


def test_searched_noise_follows_the_official_grids_and_cancels_without_quantization(swinir, searched_swinir):
    variants, method, _ = searched_swinir
    for c in method.choices.values():
        if c.choice == "searched":  # o on the 0.05-step grid in [-1.5, 1.5], r in [0, 2]
            assert -1.5 <= c.offset_steps <= 1.5 and 0 <= c.range_steps <= 2.0
            assert abs(c.offset_steps / 0.05 - round(c.offset_steps / 0.05)) < 1e-9
    qmodel = variants["searched"]
    x = lr_batch(1, 16, seed=5)
    with torch.no_grad():
        reference = swinir(x)
        set_quant_enabled(qmodel, False)
        try:
            cancelled = qmodel(x)
        finally:
            set_quant_enabled(qmodel, True)
    assert (cancelled - reference).abs().max() <= 1e-5


def test_searched_noise_saves_and_loads_exactly(tmp_path, swinir, searched_swinir):
    qmodel = searched_swinir[0]["searched"]
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "searched.pt", {"method": "noisyquant"}), swinir)
    x = lr_batch(1, 16, seed=7)
    with torch.no_grad():
        assert torch.equal(qmodel(x), loaded(x))


def test_searched_noise_on_conv_inputs_is_never_worse_than_none():
    from methods.noisyquant import find_targets
    model, batch = tiny_cnn(1), lr_batch(2, 12, seed=3)

    def ctx():
        return CalibContext(calib_batch=batch, progress=False)
    searched, _ = quantize_with_method(model, NoisyQuant(targets="all", base="minmax"), 4, 4, ctx())
    none, _ = quantize_with_method(model, create_method("minmax"), 4, 4, ctx())
    errors = layer_errors({"searched": searched, "none": none}, none, batch, find_targets(none, "all"))
    assert len(errors) == 3 and all(e["searched"] <= e["none"] for e in errors.values()), errors
