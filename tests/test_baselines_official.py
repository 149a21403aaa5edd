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
