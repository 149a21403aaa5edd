"""Baselines equal to their authors' code (issue 26): the values below are worked out by hand from the official
formulas (yhhhli/BRECQ, wimh966/QDrop, kriskrisliu/NoisyQuant); each test says which formula and where."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import methods.reconstruction as recon
from bench.errors import ConfigError
from bench.quant.pipeline import CalibContext, quantize_with_method
from methods import create_method
from methods.reconstruction import beta_at


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ AdaRound / BRECQ / QDrop: beta

# The official schedule (yhhhli/BRECQ quant/block_recon.py and layer_recon.py, QDrop's copy): LossFunction keeps
# `count`, incremented *before* use, so the first iteration is count = 1 and the last count = iters. The rounding
# loss is off while count < loss_start = iters * warmup; LinearTempDecay(t_max = iters, start_decay = warmup * iters)
# gives b(t) = end + (start - end) * max(0, 1 - (t - start_decay) / (t_max - start_decay)).
# With iters = 200, warmup = 0.2, b_range = (20, 2): loss_start = start_decay = 40, t_max - start_decay = 160.
#   count 1   : 1 < 40                   -> no rounding loss
#   count 39  : 39 < 40                  -> no rounding loss (the official warm-up is 39 iterations)
#   count 40  : rel 0                    -> b = 2 + 18 * 1        = 20
#   count 41  : rel 1/160 (warm-up + 1)  -> b = 2 + 18 * 159/160  = 19.8875
#   count 200 : rel 160/160 = 1          -> b = 2 + 18 * 0        = 2   (the project counted from 0: 2.1125)
@pytest.mark.parametrize("count, expected", [(1, None), (39, None), (40, 20.0), (41, 19.8875), (200, 2.0)])
def test_beta_follows_the_official_schedule(count, expected):
    beta = beta_at(count, 200, 0.2, 20.0, 2.0)
    assert beta == (None if expected is None else pytest.approx(expected, abs=1e-12))


def test_beta_without_warmup_starts_one_step_into_the_decay():
    # warmup = 0: loss_start = start_decay = 0, so count 1 already decays: b = 2 + 18 * (1 - 1/200) = 19.91
    assert beta_at(1, 200, 0.0, 20.0, 2.0) == pytest.approx(19.91, abs=1e-12)
    assert beta_at(200, 200, 0.0, 20.0, 2.0) == pytest.approx(2.0, abs=1e-12)


def test_reconstruction_feeds_the_official_beta_to_the_regulariser(monkeypatch):
    # iters = 10, warmup = 0.2: loss_start = 2, so the regulariser runs at counts 2..10 (9 iterations) with
    # b(c) = 2 + 18 * (1 - (c - 2) / 8): 20 at count 2, 17.75 at count 3, ..., exactly 2 at count 10.
    seen: list[float] = []
    original = recon.rounding_regulariser

    def spy(hs, beta):
        seen.append(beta)
        return original(hs, beta)

    monkeypatch.setattr(recon, "rounding_regulariser", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)).eval()
    batch = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    quantize_with_method(model, create_method("adaround", iters=10, batch=2, warmup=0.2), 4, 4,
                         CalibContext(calib_batch=batch, seed=0, progress=False), scope="ptq4sr")
    assert seen == pytest.approx([2 + 18 * (1 - (c - 2) / 8) for c in range(2, 11)], abs=1e-12)
    assert seen[0] == 20.0 and seen[-1] == 2.0


# ------------------------------------------------------------------------------ QDrop: drop vs the official drop_prob

# wimh966/QDrop's fake quantizers (qdrop/quantization/fake_quant.py) and its input mix (qdrop/solver/recon.py) both
# draw `where(rand_like(x) < drop_prob, quantized, fp)`: drop_prob is the probability of KEEPING the quantized value.
# The project's `drop` is the paper's p, the probability of FP; `keep_prob` is the official drop_prob.
def _official_mask_mix(quant: torch.Tensor, fp: torch.Tensor, drop_prob: float, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.where(torch.rand_like(quant) < drop_prob, quant, fp)


@pytest.mark.parametrize("spelling", [{"keep_prob": 0.25}, {"drop": 0.75}])
def test_qdrop_input_mix_draws_the_official_mask(spelling):
    quant, fp = torch.ones(4, 2000), torch.zeros(4, 2000)
    keep = create_method("qdrop", **spelling).recon_config().keep
    torch.manual_seed(7)
    mixed = recon.UnitInput((quant,), {}, 4).select(None, recon.UnitInput((fp,), {}, 4), keep)[0][0]
    assert torch.equal(mixed, _official_mask_mix(quant, fp, 0.25, seed=7))
    assert float((mixed == 0).float().mean()) == pytest.approx(0.75, abs=0.01)  # 75 % FP elements at drop_prob 0.25


def test_qdrop_activation_drop_draws_the_official_mask():
    class Quantize(nn.Module):  # stands in for an activation quantizer: its output differs from its input
        def forward(self, x):
            return x + 1.0

    act, x = Quantize(), torch.zeros(4, 2000)
    torch.manual_seed(11)
    with recon._dropping([act], keep=0.25):
        out = act(x)
    assert torch.equal(out, _official_mask_mix(x + 1.0, x, 0.25, seed=11))


def test_qdrop_keep_prob_and_drop_spellings_give_the_same_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1)).eval()
    batch = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    outs = []
    for spelling in ({"keep_prob": 0.25}, {"drop": 0.75}, {"drop": 0.25}):
        method = create_method("qdrop", iters=8, batch=2, lr=0.05, lr_act=1e-3, **spelling)
        qmodel, _ = quantize_with_method(model, method, 4, 4, CalibContext(calib_batch=batch, seed=3, progress=False),
                                         scope="ptq4sr")
        with torch.no_grad():
            outs.append(qmodel(x))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])  # drop 0.25 is the opposite FP share


def test_qdrop_keep_prob_is_checked_against_drop():
    assert create_method("qdrop", keep_prob=0.25).params.drop == 0.75  # recorded in both spellings
    assert create_method("qdrop", keep_prob=1.0).recon_config().keep == 1.0  # = BRECQ
    with pytest.raises(ConfigError, match="drop=0.3 and keep_prob=0.25 disagree"):
        create_method("qdrop", drop=0.3, keep_prob=0.25)
    with pytest.raises(ConfigError, match=r"keep_prob=0.0 must be in \(0, 1\]"):
        create_method("qdrop", keep_prob=0.0)


# ------------------------------------------------------------------------------ RepQ-ViT: variant=code

def _norm_and_linear():
    from bench.quant.layers import QuantLinear

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(2)
            self.fc = QuantLinear(nn.Linear(2, 1), 4, 4)

    block = Block()
    with torch.no_grad():
        block.norm.weight.copy_(torch.tensor([1.0, 2.0]))
        block.norm.bias.copy_(torch.tensor([0.5, -0.3]))
        block.fc.weight.copy_(torch.tensor([[1.0, -1.0]]))
        block.fc.bias.copy_(torch.tensor([0.2]))
    return block


# zkkli/RepQ-ViT classification/test_quant.py, "scale reparameterization", with 4 bits (2^b - 1 = 15) and the
# per-channel calibration delta = (0.1, 0.3), integer zero points zp = (8, 9), i.e. channel lower bounds
# act_min = -zp * delta = (-0.8, -2.7) and upper bounds (15 - zp) * delta = (0.7, 1.8):
#   target_delta = mean(delta) = 0.2, target_zero_point = mean(zp) = 8.5 (not an integer),
#   target_min = -8.5 * 0.2 = -1.7;  r = delta / 0.2 = (0.5, 1.5);  b = act_min / r - target_min = (0.1, -0.1)
#   LayerNorm (gamma, beta) = ((1, 2), (0.5, -0.3)):  gamma' = gamma / r = (2, 4/3),  beta' = beta / r - b = (0.9, -0.1)
#   Linear W = [[1, -1]], bias 0.2:  W' = W * r = [[0.5, -1.5]],  bias' = bias + W' b = 0.2 + 0.05 + 0.15 = 0.4
# The paper's fold (variant=paper) uses target_min = mean(act_min) = -1.75 instead: b = (0.15, -0.05),
#   beta' = (0.85, -0.15), bias' = 0.2 + 0.075 + 0.075 = 0.35 - the difference issue 26 measured.
# The per-tensor quantizer after the fold: delta 0.2 and zero point 8.5, stored as round(8.5) = 8 (half to even):
#   l = -8 * 0.2 = -1.6, u = (15 - 8) * 0.2 = 1.4.
@pytest.mark.parametrize("variant, beta, bias, bounds", [
    ("code", (0.9, -0.1), 0.4, (-1.6, 1.4)),
    ("paper", (0.85, -0.15), 0.35, (-1.75, 1.25)),  # paper: l = mean(act_min) = -1.75, u = l + 15 * 0.2
])
def test_repq_fold_matches_the_official_formulas(variant, beta, bias, bounds):
    from methods.repq_vit import FoldGroup, reparameterise, reparameterise_code
    block = _norm_and_linear()
    group = FoldGroup("norm", ["fc"], lower=torch.tensor([-0.8, -2.7], dtype=torch.float64),
                      upper=torch.tensor([0.7, 1.8], dtype=torch.float64))
    if variant == "code":
        assert reparameterise_code(block, group, 4) == pytest.approx(8.5, abs=1e-12)
    else:
        reparameterise(block, group, 4)
    assert block.norm.weight.tolist() == pytest.approx([2.0, 4 / 3], abs=1e-6)
    assert block.norm.bias.tolist() == pytest.approx(list(beta), abs=1e-6)
    assert block.fc.weight.tolist() == [pytest.approx([0.5, -1.5], abs=1e-6)]
    assert block.fc.bias.tolist() == pytest.approx([bias], abs=1e-6)
    q = block.fc.input_quant
    assert (float(q.lower.detach()), float(q.upper.detach())) == pytest.approx(bounds, abs=1e-6)


# RepQ-ViT's LogSqrt2Quantizer.quantize: k = round(-2 log2(x / delta)); k >= 2^b -> 0; else with k' = clamp(k, 0,
# 2^b - 1): delta * 2^(-ceil(k'/2)) * (1 + (k' mod 2)(sqrt2 - 1)) = delta * sqrt2^(-k'). With b = 3 and delta = 1:
#   k' = 0..7 -> 1, 2^-1 sqrt2 = 0.70711, 0.5, 2^-2 sqrt2 = 0.35355, 0.25, 0.17678, 0.125, 2^-4 sqrt2 = 0.088388,
#   and 0 (k >= 8): 2^b + 1 = 9 values, one more than 3 bits hold. The project's b-bit quantizer keeps zero and the
#   2^b - 1 = 7 largest powers: sqrt2^-7 = 0.088388 maps to 0 there (bench/quant/log_quantizer.py).
def test_official_log_sqrt2_levels_and_the_b_bit_clamp():
    from bench.quant.log_quantizer import log_quantize_values
    from methods.repq_vit import official_log_sqrt2
    x = torch.tensor([2.0 ** (-k / 2) for k in range(9)] + [2.0, 0.0], dtype=torch.float64)
    official = [1.0, 0.70711, 0.5, 0.35355, 0.25, 0.17678, 0.125, 0.088388, 0.0, 1.0, 0.0]
    assert official_log_sqrt2(x, 1.0, 3).tolist() == pytest.approx(official, abs=1e-5)
    assert len(set(official)) == 9
    clamped = log_quantize_values(x, torch.tensor(1.0, dtype=torch.float64), 3, 0.5, False)
    assert clamped.tolist() == pytest.approx(official[:7] + [0.0] + official[8:], abs=1e-5)


def test_repq_code_variant_runs_on_swinir_light_and_keeps_the_fp_output():
    from models import create_model
    swinir = create_model("swinir-light", 2)
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    method = create_method("repq-vit", variant="code")
    qmodel, _ = quantize_with_method(swinir, method, 4, 4, CalibContext(calib_batch=batch, progress=False))
    assert method.fold_delta < 1e-3  # the fold keeps the FP model (fold_check stops the method beyond 1e-4 relative)
    zero_points = method.describe()["fold_zero_points"]
    assert len(zero_points) == 48  # norm1 and norm2 of the 24 Swin blocks
    assert any(z != round(z) for z in zero_points.values())  # the released fold's mean is not an integer
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.isfinite(qmodel(x)).all()
