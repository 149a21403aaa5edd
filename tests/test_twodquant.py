"""2DQuant (DOBI + DQC): both DQC loss variants against hand-computed values (the code variant's B x B
broadcasting included), presets, the shared bound trainer (loss decreases on a fixed batch, only bounds
change), and end-to-end runs on SwinIR-light (random weights) and IMDN x2."""
from __future__ import annotations

import math

import pytest
import torch

from methods.twodquant import PRESETS, TwoDQuant, dqc_loss_code, dqc_loss_paper

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
