"""models.checkpoint: wrappers and prefixes are accepted, derived buffers dropped, and every wrong checkpoint is a
one-line CheckpointError naming the file (and the keys, or the scale, at fault)."""
from __future__ import annotations

import pytest
import torch

from bench.errors import CheckpointError
from models import create_model
from models.checkpoint import CheckpointMismatchError, load_checkpoint, read_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def imdn_x2_path(weights_dir):
    return weights_dir / "imdn" / "IMDN_x2.pth"


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------------------- wrong checkpoints

def test_x2_weights_into_an_x4_model_is_a_scale_mismatch(imdn_x2_path):
    with pytest.raises(CheckpointError) as info:
        create_model("imdn", 4, weights=imdn_x2_path)
    assert _one_line(info) == (f"checkpoint {imdn_x2_path} is for x2, model imdn is x4; "
                               f"pass the x4 weights file")
    assert [k for k, _, _ in info.value.mismatched] == ["upsampler.0.weight", "upsampler.0.bias"]
    assert info.value.mismatched[0][1:] == ((12, 64, 3, 3), (48, 64, 3, 3))


def test_imdn_weights_into_swinir_names_the_file_and_keys(imdn_x2_path):
    with pytest.raises(CheckpointMismatchError) as info:
        create_model("swinir-light", 2, weights=imdn_x2_path)
    message = _one_line(info)
    assert message.startswith(f"checkpoint {imdn_x2_path} does not match model swinir-light: 330 missing "
                              f"(conv_first.weight, conv_first.bias, patch_embed.norm.weight")
    assert "92 unexpected (fea_conv.weight, fea_conv.bias" in message and "another architecture" in message
    assert len(info.value.missing) == 330 and len(info.value.unexpected) == 92


def test_another_architecture_is_not_reported_as_a_scale_mismatch(imdn_x2_path):
    # IMDN x2's upsampler would read as "x2" for RFDN x4, but the rest of the network differs too
    with pytest.raises(CheckpointMismatchError) as info:
        create_model("rfdn", 4, weights=imdn_x2_path)
    message = _one_line(info)
    assert "is for x2" not in message and message.endswith("it is for another architecture, pass the weights of rfdn")
    assert "8 with another shape (fea_conv.weight (64, 3, 3, 3) vs model (50, 3, 3, 3)" in message


def test_truncated_checkpoint(imdn_x2_path, tmp_path):
    broken = tmp_path / "IMDN_x2_truncated.pth"
    broken.write_bytes(imdn_x2_path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="IMDN_x2_truncated.pth is not a readable PyTorch checkpoint") as info:
        create_model("imdn", 2, weights=broken)
    _one_line(info)


def test_text_file_and_broken_safetensors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.txt is not a readable PyTorch checkpoint"):
        create_model("imdn", 2, weights=text)
    fake = tmp_path / "imdn.safetensors"
    fake.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="imdn.safetensors is not a readable .safetensors file"):
        create_model("imdn", 2, weights=fake)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="weights file .*nowhere.pth not found"):
        create_model("imdn", 2, weights=tmp_path / "nowhere.pth")
    torch.save({"epoch": 3, "optimizer": {"lr": torch.tensor(0.1)}}, tmp_path / "trainer_state.pth")
    with pytest.raises(CheckpointError, match="trainer_state.pth holds no state dict"):
        create_model("imdn", 2, weights=tmp_path / "trainer_state.pth")


def test_missing_unexpected_and_reshaped_keys_are_named(imdn_x2_path):
    state, _ = read_state_dict(imdn_x2_path)
    del state["IMDB3.c2.bias"]
    state["IMDB7.c1.weight"] = torch.zeros(1)
    state["LR_conv.weight"] = torch.zeros(64, 64, 1, 1)
    model = create_model("imdn", 2, weights="random")
    with pytest.raises(CheckpointMismatchError) as info:
        load_checkpoint(model, state)
    assert _one_line(info) == (
        "checkpoint <state dict> does not match model imdn: 1 missing (IMDB3.c2.bias); 1 unexpected "
        "(IMDB7.c1.weight); 1 with another shape (LR_conv.weight (64, 64, 1, 1) vs model (64, 64, 3, 3)); "
        "it is for another configuration, pass the weights of imdn")
    # non-strict still refuses a shape mismatch, but accepts missing/unexpected keys
    state["LR_conv.weight"] = torch.zeros(64, 64, 3, 3)
    report = load_checkpoint(model, state, strict=False)
    assert report.n_tensors == 91 and torch.equal(model.LR_conv.weight, torch.zeros(64, 64, 3, 3))


# ------------------------------------------------------------------------------------- accepted formats

@pytest.mark.parametrize("wrap", ["plain", "module", "params", "params_ema", "state_dict", "model", "nested"])
def test_wrappers_and_prefixes_load_identically(wrap, imdn_x2_path, tmp_path):
    state, _ = read_state_dict(imdn_x2_path)
    saved = {
        "plain": state,
        "module": {f"module.{k}": v for k, v in state.items()},
        "params": {"params": state},
        "params_ema": {"params_ema": state, "iter": 5},
        "state_dict": {"state_dict": {f"_orig_mod.{k}": v for k, v in state.items()}, "epoch": 1},
        "model": {"format": "x", "model": state, "optimizer": {}},
        "nested": {"model": {"params": state}},
    }[wrap]
    path = tmp_path / f"{wrap}.pth"
    torch.save(saved, path)
    reference = create_model("imdn", 2, weights=imdn_x2_path)
    model = create_model("imdn", 2, weights=path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


def test_params_is_preferred_over_params_ema(imdn_x2_path, tmp_path):
    state, _ = read_state_dict(imdn_x2_path)
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save({"params_ema": zeros, "params": state}, tmp_path / "both.pth")
    model = create_model("imdn", 2, weights=tmp_path / "both.pth")
    assert torch.equal(model.fea_conv.weight, state["fea_conv.weight"])


def test_safetensors_round_trip(imdn_x2_path, tmp_path):
    from safetensors.torch import save_file
    state, _ = read_state_dict(imdn_x2_path)
    save_file(state, str(tmp_path / "imdn_x2.safetensors"))
    model = create_model("imdn", 2, weights=tmp_path / "imdn_x2.safetensors")
    assert torch.equal(model.upsampler[0].weight, state["upsampler.0.weight"])


def test_swinir_round_trip_with_official_layout_and_derived_buffers(tmp_path):
    torch.manual_seed(0)
    source = create_model("swinir-light", 3, weights="random")
    state = dict(source.state_dict())
    # the official checkpoints store these derived buffers (attn_mask for 64x64 training patches)
    for i in range(4):
        for j in range(6):
            prefix = f"layers.{i}.residual_group.blocks.{j}."
            state[prefix + "attn.relative_position_index"] = torch.full((64, 64), 7)
            if j % 2:
                state[prefix + "attn_mask"] = torch.zeros(64, 64, 64)
    torch.save({"params": state}, tmp_path / "swinir_x3.pth")
    loaded = create_model("swinir-light", 3, weights=tmp_path / "swinir_x3.pth")
    report = load_checkpoint(create_model("swinir-light", 3, weights="random"), tmp_path / "swinir_x3.pth")
    assert len(report.dropped) == 24 + 12 and report.n_tensors == 330
    x = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x))


def test_swinir_scale_mismatch_light_and_classical(tmp_path):
    torch.manual_seed(0)
    torch.save({"params": create_model("swinir-light", 2, weights="random").state_dict()}, tmp_path / "light_x2.pth")
    with pytest.raises(CheckpointError, match=r"light_x2.pth is for x2, model swinir-light is x4"):
        create_model("swinir-light", 4, weights=tmp_path / "light_x2.pth")
    classical_x4 = create_model("swinir-m", 4, weights="random").state_dict()
    torch.save(classical_x4, tmp_path / "m_x4.pth")
    with pytest.raises(CheckpointError, match=r"m_x4.pth is for x4, model swinir-m is x2"):
        create_model("swinir-m", 2, weights=tmp_path / "m_x4.pth")


def test_carn_m_ignores_only_the_other_scales_upsamplers(weights_dir, tmp_path):
    state, _ = read_state_dict(weights_dir / "carn" / "carn_m.pth")
    report = load_checkpoint(create_model("carn-m", 3, weights="random"), state)
    assert sorted(report.dropped) == sorted(k for k in state if k.startswith(("upsample.up2.",
                                                                                      "upsample.up4.")))
    del state["upsample.up3.body.0.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing \(upsample.up3.body.0.bias\)"):
        load_checkpoint(create_model("carn-m", 3, weights="random"), state)
