"""2DQuant (DOBI + DQC): both DQC loss variants against hand-computed values (the code variant's B x B
broadcasting included), presets, the shared bound trainer (loss decreases on a fixed batch, only bounds
change), and end-to-end runs on SwinIR-light (random weights) and IMDN x2."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from bench.quant.pipeline import CalibContext, quantize_with_method
from bench.quant.surgery import (
    QuantConfig,
    bound_parameters,
    quantize_model,
    quantizers,
)
from methods.dobi import DOBI
from methods.finetune import (
    BoundTrainer,
    FeatureTap,
    OptimConfig,
    feature_modules,
    psnr,
)
from methods.minmax import MinMax
from methods.twodquant import PRESETS, TwoDQuant, dqc_loss_code, dqc_loss_paper

pytestmark = pytest.mark.usefixtures("one_thread")

# B = 2 images of 1 x 1 x 2 and features of B = 2, L = 1 token, C = 2 channels with easy norms:
#   F_q = [[3, 4]], [[1, 0]]  (norms 5, 1);   F_fp = [[4, 3]], [[0, 2]]  (norms 5, 2).
OUT_FP = torch.tensor([[[[1.0, 2.0]]], [[[3.0, 4.0]]]])
OUT_Q = torch.zeros_like(OUT_FP)
FEAT_Q = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])
FEAT_FP = torch.tensor([[[4.0, 3.0]], [[0.0, 2.0]]])


def test_dqc_paper_loss_hand_computed():
    # L_O = (1 + 2 + 3 + 4) / 4 = 2.5.
    # L_F: sample 0: [0.6, 0.8] - [0.8, 0.6] -> L2 0.2*sqrt2; sample 1: [1, 0] - [0, 1] -> sqrt2; each / (C L) = 2,
    #      batch mean = (0.2 sqrt2 + sqrt2) / 4 = 0.3 sqrt2.
    expected = 2.5 + 5 * 0.3 * math.sqrt(2)
    assert dqc_loss_paper(OUT_Q, OUT_FP, [FEAT_Q], [FEAT_FP], lam=5.0).item() == pytest.approx(expected, rel=1e-6)
    assert dqc_loss_paper(OUT_Q, OUT_FP, [], [], lam=5.0).item() == pytest.approx(2.5)


def test_dqc_code_loss_hand_computed_with_broadcasting_bug():
    # l_pix = L1_mean * B / numel(O) = 2.5 * 2 / 4 = 1.25.
    # Normalised features are (B, B, L, C): entry [j, i] = F[i] / ||F[j]||. Squared differences per [j, i]:
    #   j=0 (q / 5, fp / 5): i=0 [0.6,0.8]-[0.8,0.6] -> 0.08;  i=1 [0.2,0]-[0,0.4] -> 0.20
    #   j=1 (q / 1, fp / 2): i=0 [3,4]-[2,1.5]     -> 7.25;  i=1 [1,0]-[0,1]   -> 2.00
    # MSE mean = 9.53 / 8; divided by numel = B^2 L C = 8; times 5.
    expected = 1.25 + 5 * (9.53 / 8) / 8
    got = dqc_loss_code(OUT_Q, OUT_FP, [FEAT_Q], [FEAT_FP], lam=5.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert got.item() == pytest.approx(1.99453125, rel=1e-6)
    # Without the bug (per-sample normalisation: the j == i entries only) it would be 1.25 + 5 * (2.08/4)/4.
    assert got.item() != pytest.approx(1.25 + 5 * (2.08 / 4) / 4, rel=1e-3)


def test_dqc_code_loss_detaches_the_norms():
    feat_q = FEAT_Q.clone().requires_grad_(True)
    dqc_loss_code(OUT_Q, OUT_FP, [feat_q], [FEAT_FP], lam=5.0).backward()
    # With constant norms n_q = (5, 1), n_fp = (5, 2): d/dF_q[i] = 5 * 2/64 * sum_j (F_q[i]/n_q[j] - F_fp[i]/n_fp[j]) / n_q[j]
    n_q, n_fp = torch.tensor([5.0, 1.0]), torch.tensor([5.0, 2.0])
    expected = torch.zeros(2, 1, 2)
    for i in range(2):
        for j in range(2):
            expected[i] += 5 * 2 / 64 * (FEAT_Q[i] / n_q[j] - FEAT_FP[i] / n_fp[j]) / n_q[j]
    assert torch.allclose(feat_q.grad, expected, rtol=1e-6)


def test_presets_and_overrides():
    paper = TwoDQuant().settings()
    assert (paper.batch, paper.iters, paper.lr, paper.beta1, paper.beta2, paper.schedule, paper.loss,
            paper.dobi_variant) == (32, 3000, 1e-2, 0.9, 0.999, "cosine", "paper", "paper")
    code = TwoDQuant(preset="code").settings()
    assert (code.batch, code.iters, code.beta2, code.schedule, code.loss) == (16, 4000, 0.99, "constant", "code")
    mixed = TwoDQuant(preset="code", iters=7, loss="paper", dobi_variant="paper").settings()
    assert (mixed.batch, mixed.iters, mixed.loss, mixed.dobi_variant) == (16, 7, "paper", "paper")
    assert set(PRESETS) == {"paper", "code"}
    record = TwoDQuant(preset="code", iters=7).describe()
    assert record["name"] == "2dquant" and record["settings"]["iters"] == 7


# ------------------------------------------------------------------------------------- fine-tuning

@pytest.fixture(scope="module")
def imdn_x2(weights_dir):
    from models import create_model
    return create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")


def _is_bound(name: str) -> bool:
    return name.endswith(("lower", "upper"))


def test_bound_trainer_fixed_batch_loss_decreases_and_only_bounds_change(swinir_random):
    fp = swinir_random
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    # 2-bit MinMax initialisation (the paper's "DQC only" ablation start): the loss has room to fall.
    qmodel = quantize_model(fp, QuantConfig(2, 2, scope="2dquant"))
    MinMax().calibrate(qmodel, CalibContext(calib_batch=batch))
    before = {k: v.clone() for k, v in qmodel.state_dict().items()}
    bounds = bound_parameters(qmodel)
    assert len(bounds) == 768
    trainer = BoundTrainer(qmodel, fp, bounds, dqc_loss_paper, OptimConfig(lr=1e-2, iters=5, schedule="constant"),
                           progress=False)
    result = trainer.run(lambda: batch)  # the same batch every step
    losses = result.losses
    assert len(losses) == 5
    assert all(later < earlier for earlier, later in itertools.pairwise(losses)), losses
    assert losses[-1] < 0.8 * losses[0]
    changed = 0
    for key, value in qmodel.state_dict().items():
        if _is_bound(key):
            changed += not torch.equal(value, before[key])
        else:  # weights, biases, LayerNorms, rel-pos tables: bit-identical
            assert torch.equal(value, before[key]), key
    assert changed > 700
    # requires_grad restored: bounds trainable, everything else frozen (as quantize_model left them).
    assert all(p.requires_grad == _is_bound(n) for n, p in qmodel.named_parameters())
    assert not fp.training and not qmodel.training


def test_feature_tap_collects_rstb_outputs(swinir_random):
    x = torch.rand(1, 3, 16, 16)
    with FeatureTap(feature_modules(swinir_random)) as tap, torch.no_grad():
        swinir_random(x)
        feats = tap.take()
    assert [tuple(f.shape) for f in feats] == [(1, 256, 60)] * 4  # 4 RSTB groups, (B, H*W, C)
    assert tap.take() == []


def _check_quantized(qmodel, fp, batch):
    with torch.no_grad():
        out, ref = qmodel(batch), fp(batch)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    for name, q in quantizers(qmodel):
        assert q.calibrated and torch.isfinite(q.lower).all() and torch.isfinite(q.upper).all(), name
        assert (q.lower < q.upper).all(), name


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_2dquant_end_to_end_swinir(swinir_random, bits):
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(bits))
    dobi = quantize_model(swinir_random, QuantConfig(bits, bits, scope="2dquant"))
    DOBI(K=10).calibrate(dobi, CalibContext(calib_batch=batch))
    method = TwoDQuant(iters=2, batch=2, patch=16, K=10)
    qmodel, _ = quantize_with_method(swinir_random, method, bits, bits,
                                           CalibContext(calib_batch=batch, progress=False))
    _check_quantized(qmodel, swinir_random, batch)
    assert len(method.history.losses) == 2 and all(math.isfinite(v) for v in method.history.losses)
    # DQC started from the DOBI bounds and moved all 768 of them.
    start = dict(bound_state(dobi))
    moved = sum(not torch.equal(v, start[k]) for k, v in bound_state(qmodel))
    assert moved == 768
    assert qmodel.quant_method["settings"]["dobi_variant"] == "paper"


def bound_state(qmodel):
    return [(k, v) for k, v in qmodel.state_dict().items() if _is_bound(k)]


def test_2dquant_code_preset_and_val_selection_keep_best_bounds(swinir_random):
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    val = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    method = TwoDQuant(preset="code", iters=3, batch=2, patch=16, K=10, select="val", val_every=1)
    ctx = CalibContext(calib_batch=batch, val_batch=val, progress=False)
    qmodel, _ = quantize_with_method(swinir_random, method, 2, 2, ctx)
    history = method.history
    assert [it for it, _ in history.val_psnr] == [1, 2, 3]
    best_it, best = max(history.val_psnr, key=lambda item: (item[1], -item[0]))
    assert history.best_iter == best_it
    with torch.no_grad():
        kept = psnr(qmodel(val), swinir_random(val))
    assert kept == pytest.approx(best, abs=1e-9)
    assert method.describe()["settings"]["loss"] == "code"


def test_2dquant_select_val_without_val_batch_is_a_config_error(swinir_random):
    from bench.errors import ConfigError
    batch = torch.rand(1, 3, 8, 8)
    with pytest.raises(ConfigError, match="val_batch"):
        quantize_with_method(swinir_random, TwoDQuant(iters=1, batch=1, patch=8, K=2, select="val"), 4, 4,
                             CalibContext(calib_batch=batch, progress=False))


@pytest.mark.parametrize("bits", [4, 3, 2])
def test_2dquant_end_to_end_imdn_x2(imdn_x2, train_root, bits):
    batch = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(bits))
    # Patches from the training images; select=val without a val_batch uses their held-out "val" split.
    method = TwoDQuant(iters=2, batch=2, patch=16, K=10, select="val", val_every=1, val_n=2)
    ctx = CalibContext(calib_batch=batch, train_dir=train_root, progress=False)
    qmodel, _ = quantize_with_method(imdn_x2, method, bits, bits, ctx)
    _check_quantized(qmodel, imdn_x2, batch)
    assert len(method.history.losses) == 2 and all(math.isfinite(v) for v in method.history.losses)
    assert [it for it, _ in method.history.val_psnr] == [1, 2]
    assert all(math.isfinite(v) and v > 10 for _, v in method.history.val_psnr)
