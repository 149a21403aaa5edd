"""IMDTN (NTIRE 2022 ESR team09): parameter count, exact loading of the official file, the derived buffers it
stores, the challenge padding, the quantization scopes over its convs and Swin blocks, and Set5 x4 FP PSNR."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench.data.dataset import load_dataset
from bench.evaluate import evaluate
from bench.quant import QuantConfig, quantize_model, quantizers, weight_quantizers
from models import create_model
from models.cards import get_card
from models.checkpoint import CheckpointMismatchError, load_checkpoint, read_state_dict
from models.imdtn import channel_shuffle, pad_past_multiple
from models.swinir import relative_position_index, shift_mask

pytestmark = pytest.mark.usefixtures("one_thread")

OFFICIAL = "ntire2022-esr-x4/team09_imdtn.pth"
N_PARAMS = 371_532  # trainable; the NTIRE 2022 report lists 0.372 M for team ZLZ
MASK_NUMEL = 3 * 64 * 36 * 36  # one stored attn_mask per block pair (blocks.1), 48x48 input, window 6
INDEX_NUMEL = 6 * 36 * 36  # relative_position_index of each of the 6 Swin blocks


@pytest.fixture(scope="module")
def weights_file(weights_dir):
    path = weights_dir / OFFICIAL
    if not path.is_file():
        pytest.skip(f"{path} not found; put the NTIRE 2022 team09_imdtn.pth there (ofsoundof/NTIRE2022_ESR model_zoo)")
    return path


@pytest.fixture(scope="module")
def imdtn(weights_file):
    return create_model("imdtn", 4, weights=weights_file)


# ------------------------------------------------------------------------------------ structure, no files

def test_parameter_count_and_card():
    model = create_model("imdtn", 4, weights="random")
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS == get_card("imdtn", 4).params
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 16  # the report's #Conv for team ZLZ
    assert [type(m).__name__ for m in model.feature_modules()] == ["IMDTBlock"] * 3


def test_channel_shuffle_is_the_transpose_of_groups():
    x = torch.arange(2 * 64 * 3 * 2, dtype=torch.float32).view(2, 64, 3, 2)
    out = channel_shuffle(x, 4)
    for i in range(4):
        for j in range(16):
            assert torch.equal(out[:, j * 4 + i], x[:, i * 16 + j])


@pytest.mark.parametrize("h,w,padded", [(12, 13, (18, 18)), (5, 1, (6, 6)), (17, 6, (18, 12))])
def test_challenge_padding_mirrors_up_to_the_next_multiple_above(h, w, padded):
    x = torch.rand(1, 3, h, w)
    out = pad_past_multiple(x, 6)
    assert tuple(out.shape[-2:]) == padded
    assert torch.equal(out[..., :h, :w], x)
    rows = min(h, padded[0] - h)  # the first mirrored rows are the image's last rows, reversed
    assert torch.equal(out[..., h:h + rows, :w], x.flip(2)[..., :rows, :])


def test_any_input_size_gives_scale_times_its_size():
    model = create_model("imdtn", 4, weights="random")
    with torch.no_grad():
        assert model(torch.rand(1, 3, 7, 13)).shape == (1, 3, 28, 52)


# ------------------------------------------------------------------------------------ the official file

def test_official_file_loads_exactly(weights_file, imdtn):
    state, _ = read_state_dict(weights_file)
    assert len(state) == 119
    assert sum(t.numel() for t in state.values()) == 628_140 == N_PARAMS + MASK_NUMEL + INDEX_NUMEL
    report = load_checkpoint(create_model("imdtn", 4, weights="random"), weights_file)
    assert sorted(k.rsplit(".", 1)[-1] for k in report.dropped) == ["attn_mask"] * 3 + ["relative_position_index"] * 6
    own = imdtn.state_dict()
    assert len(own) == 119 - 9 and all(torch.equal(own[k], state[k]) for k in own)


def test_derived_buffers_in_the_file_equal_the_recomputed_ones(weights_file):
    state, _ = read_state_dict(weights_file)
    mask = shift_mask(48, 48, 6, 3, torch.device("cpu"), torch.float32)
    for i in (1, 2, 3):
        group = f"IMDTB{i}.transformer.residual_group.blocks."
        assert torch.equal(state[group + "1.attn_mask"], mask)
        for j in (0, 1):
            assert torch.equal(state[f"{group}{j}.attn.relative_position_index"], relative_position_index(6))


def test_wrong_checkpoints_are_refused_by_name(weights_file, weights_dir):
    state, _ = read_state_dict(weights_file)
    del state["IMDTB2.c3.bias"]
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(create_model("imdtn", 4, weights="random"), state)
    assert str(info.value) == ("checkpoint <state dict> does not match model imdtn: 1 missing (IMDTB2.c3.bias); it is "
                               "for another configuration, pass the weights of imdtn")
    with pytest.raises(CheckpointMismatchError) as info:
        create_model("imdtn", 4, weights=weights_dir / "imdn" / "IMDN_x4.pth")
    assert "does not match model imdtn" in str(info.value) and "it is for another architecture" in str(info.value)


# ------------------------------------------------------------------------------------ quantization scopes

def test_default_scope_quantizes_convs_and_swin_blocks(imdtn):
    qmodel = quantize_model(imdtn, QuantConfig(4, 4))
    assert qmodel.quant_scope == "2dquant+convs"
    qs = dict(quantizers(qmodel))
    swin = [n for n in qs if ".transformer." in n]
    assert len(swin) == 6 * 16 and len(qs) == 96 + 2 * 16  # 16 per Swin block as on SwinIR; weight + input per conv
    block = "IMDTB1.transformer.residual_group.blocks.1."
    assert {n[len(block):] for n in swin if n.startswith(block)} == {
        f"attn.qkv.{p}.{q}_quant" for p in "qkv" for q in ("weight", "input")} | {
        "attn.matmul_qk.a_quant", "attn.matmul_qk.b_quant", "attn.matmul_av.a_quant", "attn.matmul_av.b_quant",
        "attn.proj.weight_quant", "attn.proj.input_quant", "mlp.fc1.weight_quant", "mlp.fc1.input_quant",
        "mlp.fc2.weight_quant", "mlp.fc2.input_quant"}
    assert qs[block + "attn.matmul_av.a_quant"].kind == "act_softmax" and qs[block + "mlp.fc2.input_quant"].kind == "act_gelu"
    eight = sorted(n for n, q in qs.items() if q.bits == 8)
    assert eight == ["fea_conv.input_quant", "fea_conv.weight_quant", "upsampler.0.input_quant",
                     "upsampler.0.weight_quant"]
    assert all(qs[f"{n}.weight_quant"].per_channel_axis == 0 for n, m in imdtn.named_modules() if isinstance(m, nn.Conv2d))
    # quantized weights: 6 blocks x (3 x 64x64 + 64x64 + 2 x 128x64) + every conv weight
    conv_weights = sum(m.weight.numel() for m in imdtn.modules() if isinstance(m, nn.Conv2d))
    assert sum(w.numel() for _, _, w in weight_quantizers(qmodel)) == 6 * 32_768 + conv_weights == 196_608 + 168_384


def test_2dquant_scope_alone_leaves_every_conv_fp(imdtn):
    qs = quantizers(quantize_model(imdtn, QuantConfig(4, 4, scope="2dquant")))
    assert len(qs) == 96 and all(".transformer.residual_group." in n for n, _ in qs)


# ------------------------------------------------------------------------------------ measured PSNR

def test_set5_x4_psnr_matches_the_card(imdtn, benchmark_root):
    res = evaluate(imdtn, load_dataset("Set5", 4, data_root=benchmark_root), 4, "cpu", lpips=False, progress=False)
    assert round(res.psnr, 2) == get_card("imdtn", 4).measured_psnr["Set5"] == 32.15
    assert round(res.ssim, 4) == 0.8951
