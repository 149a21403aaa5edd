"""Model zoo: official checkpoints load strictly and reproduce measured/published PSNRs, SwinIR-light matches
the spec's parameter counts and structure, create_model resolves weights and reports bad names/scales."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from bench.errors import CheckpointError, ConfigError
from models import create_model
from models.cards import get_card, load_cards
from models.layers import MatMul
from models.registry import MODEL_REGISTRY, UnknownModelError
from models.swinir import BasicLayer, flip_concat_pad, relative_position_index, shift_mask

pytestmark = pytest.mark.usefixtures("one_thread")


# -------------------------------------------------------------------------------------------- helpers

def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """PSNR on the BT.601 Y channel (MATLAB coefficients), `border` pixels cropped (spec §5)."""
    def y(img):
        img = img.astype(np.float64)
        return 16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255
    a, b = y(sr)[border:-border, border:-border], y(hr)[border:-border, border:-border]
    return float(20 * np.log10(255 / np.sqrt(np.mean((a - b) ** 2))))


def read_rgb(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def set5_pair(root, name: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    lr = read_rgb(root / "Set5" / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png")
    hr = read_rgb(root / "Set5" / "HR" / f"{name}.png")[:lr.shape[0] * scale, :lr.shape[1] * scale]
    return lr, hr


def baby_crop(root, scale: int, top: int = 40, left: int = 40, size: int = 32):
    lr, hr = set5_pair(root, "baby", scale)
    return (lr[top:top + size, left:left + size],
            hr[top * scale:(top + size) * scale, left * scale:(left + size) * scale])


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def upscale(model: nn.Module, lr: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return to_uint8(model(to_tensor(lr)))


def bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    return to_uint8(F.interpolate(to_tensor(lr), scale_factor=scale, mode="bicubic", align_corners=False))


def n_params(model: nn.Module, exclude: str | None = None) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if exclude is None or exclude not in n)


OFFICIAL = {  # (model, scale) -> weights file under the shared weights folder
    ("imdn", 2): "imdn/IMDN_x2.pth", ("imdn", 3): "imdn/IMDN_x3.pth", ("imdn", 4): "imdn/IMDN_x4.pth",
    ("carn-m", 2): "carn/carn_m.pth", ("carn-m", 3): "carn/carn_m.pth", ("carn-m", 4): "carn/carn_m.pth",
    ("rfdn", 4): "ntire2022-esr-x4/rfdn_baseline.pth", ("rlfn", 4): "ntire2022-esr-x4/team04_rlfn.pth",
    ("bsrn", 4): "ntire2022-esr-x4/team18_bsrn.pth", ("imdn-ntire", 4): "ntire2022-esr-x4/imdn_baseline.pth",
}

# Y-PSNR (border = scale) on the 32x32 LR crop at (40, 40) of Set5 "baby", measured with this code; bicubic
# (torch, no antialias) on the same crop: x2 35.22, x3 31.09, x4 33.68.
CROP_PSNR = {
    ("imdn", 2): 36.45, ("imdn", 3): 32.57, ("imdn", 4): 36.53,
    ("carn-m", 2): 36.34, ("carn-m", 3): 32.59, ("carn-m", 4): 36.38,
    ("rfdn", 4): 36.53, ("rlfn", 4): 36.48, ("bsrn", 4): 36.21, ("imdn-ntire", 4): 36.59,
}


# ---------------------------------------------------------------------------------- official weights

@pytest.mark.parametrize("name,scale", sorted(OFFICIAL))
def test_official_weights_load_strictly_and_super_resolve(name, scale, weights_dir, benchmark_root):
    model = create_model(name, scale, weights=weights_dir / OFFICIAL[name, scale])
    assert not model.training
    lr, hr = baby_crop(benchmark_root, scale)
    sr = upscale(model, lr)
    assert sr.shape == hr.shape
    value = psnr_y(sr, hr, scale)
    assert round(value, 2) == CROP_PSNR[name, scale]
    assert value > psnr_y(bicubic(lr, scale), hr, scale) + 1.0


@pytest.mark.parametrize("name,expected", [("imdn", 32.21), ("carn-m", 31.88)])
def test_x4_set5_psnr_matches_the_card(name, expected, weights_dir, benchmark_root):
    model = create_model(name, 4, weights=weights_dir / OFFICIAL[name, 4])
    values = [psnr_y(upscale(model, lr), hr, 4)
              for lr, hr in (set5_pair(benchmark_root, n, 4) for n in ("baby", "bird", "butterfly", "head", "woman"))]
    assert round(float(np.mean(values)), 2) == get_card(name, 4).measured_psnr["Set5"] == expected
    if name == "imdn":  # IMDN's official weights reproduce its paper exactly (CARN-M's paper says 31.92)
        assert get_card(name, 4).paper_psnr["Set5"] == expected


@pytest.mark.parametrize("scale,count", [(2, 694_404), (3, 703_059), (4, 715_176)])
def test_imdn_parameter_count_equals_the_checkpoint(scale, count, weights_dir):
    state = torch.load(weights_dir / "imdn" / f"IMDN_x{scale}.pth", map_location="cpu", weights_only=True)
    model = create_model("imdn", scale, weights="random")
    assert n_params(model) == sum(t.numel() for t in state.values()) == count
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 46


@pytest.mark.parametrize("name", ["rfdn", "rlfn", "bsrn", "imdn-ntire"])
def test_x4_challenge_models_hold_exactly_the_checkpoint_tensors(name, weights_dir):
    state = torch.load(weights_dir / OFFICIAL[name, 4], map_location="cpu", weights_only=True)
    state = state.get("params", state)
    model = create_model(name, 4, weights="random")
    assert n_params(model) == sum(t.numel() for t in state.values()) == get_card(name, 4).params


def test_card_hashes_match_the_reference_files(weights_dir):
    import hashlib
    for (name, scale), rel in OFFICIAL.items():
        card = get_card(name, scale)
        assert card.file == (weights_dir / rel).name
        assert hashlib.sha256((weights_dir / rel).read_bytes()).hexdigest() == card.sha256, card.file


def test_carn_m_is_one_network_for_three_scales(weights_dir):
    path = weights_dir / "carn" / "carn_m.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    models = {s: create_model("carn-m", s, weights=path) for s in (2, 3, 4)}
    assert MODEL_REGISTRY["carn-m"].multi_scale
    # body shared by all scales, each model holds only its own upsampler (the paper's 412K counts all of them)
    shared = sum(t.numel() for k, t in state.items() if not k.startswith("upsample.") and "mean" not in k)
    ups = {s: sum(t.numel() for k, t in state.items() if k.startswith(f"upsample.up{s}.")) for s in (2, 3, 4)}
    assert shared + sum(ups.values()) == 414_787
    for s, model in models.items():
        assert n_params(model) == shared + ups[s] == get_card("carn-m", s).params
        assert model(torch.rand(1, 3, 8, 12)).shape == (1, 3, 8 * s, 12 * s)
        # the mean shift is frozen preprocessing: buffers, not a conv that quantization would pick up
        assert torch.equal(model.sub_mean.shifter.bias, state["sub_mean.shifter.bias"])
        assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.in_channels == 3
                       for m in model.modules())


def test_every_card_matches_its_model():
    names = {c.model for c in load_cards()}
    assert names == {"swinir-light", "swinir-m", "imdn", "carn-m", "rfdn", "rlfn", "bsrn", "imdn-ntire",
                     "imdtn"}
    for card in load_cards():
        assert card.scale in MODEL_REGISTRY[card.model].scales
        if card.model != "swinir-m":  # 11.8M params each: counted once in the SwinIR-M test below
            assert n_params(create_model(card.model, card.scale, weights="random")) == card.params, card
        assert card.url.startswith("https://") and card.url.endswith(card.file)
        assert card.sha256 is None or len(card.sha256) == 64


# ------------------------------------------------------------------------------------------- SwinIR

@pytest.fixture(scope="module")
def swinir_x2():
    torch.manual_seed(0)
    return create_model("swinir-light", 2, weights="random")


@pytest.mark.parametrize("scale,without_tables,with_tables",
                         [(2, 877_752, 910_152), (3, 885_867, 918_267), (4, 897_228, 929_628)])
def test_swinir_light_parameter_counts_match_the_spec(scale, without_tables, with_tables):
    model = create_model("swinir-light", scale, weights="random")
    assert n_params(model, exclude="relative_position_bias_table") == without_tables
    assert n_params(model) == with_tables
    assert get_card("swinir-light", scale).params == with_tables


def test_swinir_light_structure(swinir_x2):
    blocks = [b for layer in swinir_x2.layers for b in layer.residual_group.blocks]
    assert len(blocks) == 24
    assert [b.shift_size for b in blocks[:6]] == [0, 4, 0, 4, 0, 4]
    assert all(isinstance(b.mlp.act, nn.GELU) for b in blocks)
    assert (blocks[0].mlp.fc1.in_features, blocks[0].mlp.fc1.out_features) == (60, 120)
    assert (blocks[0].attn.qkv.in_features, blocks[0].attn.qkv.out_features) == (60, 180)
    assert blocks[0].attn.num_heads == 6 and blocks[0].attn.scale == 10 ** -0.5
    names = [n for n, m in swinir_x2.named_modules() if isinstance(m, MatMul)]
    assert len(names) == 48 and names[:2] == ["layers.0.residual_group.blocks.0.attn.matmul_qk",
                                              "layers.0.residual_group.blocks.0.attn.matmul_av"]
    assert swinir_x2.pad_multiple == 8 and swinir_x2.pad_mode == "flip_concat"
    assert not swinir_x2.training
    assert not [k for k in swinir_x2.state_dict() if k.endswith(("attn_mask", "relative_position_index"))]
    convs = [n for n, m in swinir_x2.named_modules() if isinstance(m, nn.Conv2d)]
    assert convs[0] == "conv_first" and convs[-1] == "upsample.0" and len(convs) == 7


def test_swinir_attention_bmms_receive_scaled_q_and_the_softmax_map(swinir_x2):
    seen = {}

    def record(key):
        def hook(module, inputs, output):
            seen[key] = inputs
        return hook

    block = swinir_x2.layers[0].residual_group.blocks[1]
    attn = block.attn
    handles = [attn.matmul_qk.register_forward_hook(record("qk")), attn.matmul_av.register_forward_hook(record("av"))]
    tokens = torch.randn(1, 256, 60, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        block(tokens, (16, 16))
        q = attn.qkv(block.norm1(tokens)).view(1, 256, 3, 6, 10)[:, :, 0]
    for handle in handles:
        handle.remove()
    q_in, kt_in = seen["qk"]
    assert q_in.shape == (4, 6, 64, 10) and kt_in.shape == (4, 6, 10, 64)  # 4 windows of 8x8
    probs, v_in = seen["av"]
    assert v_in.shape == (4, 6, 64, 10)
    assert torch.allclose(probs.sum(-1), torch.ones(4, 6, 64), atol=1e-5) and probs.min() >= 0
    # shifted block: the window partition of the rolled map; the q fed to the BMM is scaled by 10**-0.5
    rolled_q = torch.roll(q.view(1, 16, 16, 6, 10), shifts=(-4, -4), dims=(1, 2))
    first_window_q = rolled_q[0, :8, :8].reshape(64, 6, 10).transpose(0, 1)
    assert torch.allclose(q_in[0], first_window_q * 10 ** -0.5, atol=1e-6)


def test_shift_mask_and_position_index_equal_brute_force():
    h, w, ws, shift = 16, 24, 8, 4
    mask = shift_mask(h, w, ws, shift, torch.device("cpu"), torch.float32)
    assert mask.shape == ((h // ws) * (w // ws), 64, 64)

    def region(coord, size):  # band of a coordinate of the rolled map, as the cyclic shift cut it
        return 0 if coord < size - ws else (1 if coord < size - shift else 2)

    for win in range(mask.shape[0]):
        wy, wx = divmod(win, w // ws)
        labels = [(region(wy * ws + i // ws, h), region(wx * ws + i % ws, w)) for i in range(64)]
        expected = torch.tensor([[0.0 if a == b else -100.0 for b in labels] for a in labels])
        assert torch.equal(mask[win], expected)
    index = relative_position_index(ws)
    for a in range(0, 64, 9):
        for b in range(0, 64, 7):
            dy, dx = a // ws - b // ws, a % ws - b % ws
            assert index[a, b] == (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)
    assert index.min() == 0 and index.max() == 224 and index[0, 0] == 112


def test_swinir_pads_inputs_that_are_not_a_window_multiple(swinir_x2):
    x = torch.rand(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    padded = flip_concat_pad(x, swinir_x2.pad_multiple)
    assert padded.shape == (1, 3, 24, 32)
    assert torch.equal(padded[:, :, 20:24, :28], torch.flip(x, [2])[:, :, :4])  # mirror-appended, not reflect
    with torch.no_grad():
        by_caller = swinir_x2(padded)[:, :, :40, :56]
        direct = swinir_x2(x)
    assert by_caller.shape == direct.shape == (1, 3, 40, 56)
    assert torch.equal(by_caller, direct)


def test_swinir_feature_modules_are_the_four_rstb_groups(swinir_x2):
    taps = swinir_x2.feature_modules()
    assert len(taps) == 4 and all(isinstance(t, BasicLayer) for t in taps)
    shapes = []
    handles = [t.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape))) for t in taps]
    with torch.no_grad():
        swinir_x2(torch.rand(2, 3, 16, 24))
    for h in handles:
        h.remove()
    assert shapes == [(2, 16 * 24, 60)] * 4


def test_swinir_drop_path_only_in_training(swinir_x2):
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = swinir_x2(x), swinir_x2(x)
        swinir_x2.train()
        torch.manual_seed(0)
        c = swinir_x2(x)
        swinir_x2.eval()
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_swinir_m_classical_layout():
    torch.manual_seed(0)
    model = create_model("swinir-m", 4, weights="random")
    keys = model.state_dict().keys()
    assert {"conv_before_upsample.0.weight", "upsample.0.weight", "upsample.2.weight", "conv_last.weight"} <= keys
    assert len(model.layers) == 6 and model.layers[0].residual_group.blocks[0].attn.qkv.out_features == 540
    assert n_params(model) == get_card("swinir-m", 4).params == 11_900_199
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


# ------------------------------------------------------------------------------------ create_model

def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match=r"unknown model 'edsr'.*imdn.*swinir-light") as info:
        create_model("edsr", 2)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, KeyError)


def test_unsupported_scale_lists_the_supported_ones():
    with pytest.raises(ConfigError, match=r"'rfdn' has no x2; its scales are 4"):
        create_model("rfdn", 2)


def test_missing_default_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    monkeypatch.setattr("models.fetch.SHIPPED_DIR", tmp_path / "shipped")
    with pytest.raises(CheckpointError) as info:
        create_model("imdn", 3)
    message = str(info.value)
    assert "bench models fetch imdn --scale 3" in message and str(tmp_path / "weights" / "IMDN_x3.pth") in message
    assert "\n" not in message


def test_default_weights_cache_before_shipped(tmp_path, monkeypatch, weights_dir):
    from safetensors.torch import save_file
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    shipped = tmp_path / "shipped"
    monkeypatch.setattr("models.fetch.SHIPPED_DIR", shipped)
    shipped.mkdir()
    torch.manual_seed(0)
    trained = create_model("imdn", 2, weights="random")
    save_file(trained.state_dict(), str(shipped / "imdn_x2.safetensors"))
    x = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(create_model("imdn", 2)(x), trained(x))  # only the shipped file exists
        (tmp_path / "cache" / "weights").mkdir(parents=True)
        (tmp_path / "cache" / "weights" / "IMDN_x2.pth").symlink_to(weights_dir / "imdn" / "IMDN_x2.pth")
        official = create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")
        default = create_model("imdn", 2)
        assert torch.equal(default(x), official(x)) and not torch.equal(default(x), trained(x))
    assert default.weights_source.endswith("IMDN_x2.pth")


@pytest.mark.parametrize("shift,size", [(0, (16, 24)), (4, (16, 24)), (4, (24, 40))])
def test_swin_block_matches_an_independent_implementation(shift, size):
    """Cross-check one (shifted) Swin block against Hugging Face's Swin V1 layer with the same weights
    (optional: skipped where `transformers` is not installed or names its weights differently)."""
    modeling_swin = pytest.importorskip("transformers.models.swin.modeling_swin")
    from transformers import SwinConfig

    from models.swinir import SwinTransformerBlock
    torch.manual_seed(0)
    ours = SwinTransformerBlock(60, 6, 8, shift, 2.0, 0.0).eval()
    for p in ours.parameters():
        nn.init.normal_(p, std=0.3)
    config = SwinConfig(embed_dim=60, window_size=8, num_heads=[6], depths=[2], mlp_ratio=2.0, qkv_bias=True,
                        hidden_act="gelu", layer_norm_eps=1e-5, drop_path_rate=0.0)
    theirs = modeling_swin.SwinLayer(config, dim=60, input_resolution=size, num_heads=6, shift_size=shift).eval()
    q, k, v = ours.attn.qkv.weight.chunk(3)
    qb, kb, vb = ours.attn.qkv.bias.chunk(3)
    mapped = {
        "layernorm_before.weight": ours.norm1.weight, "layernorm_before.bias": ours.norm1.bias,
        "attention.q_proj.weight": q, "attention.q_proj.bias": qb, "attention.k_proj.weight": k,
        "attention.k_proj.bias": kb, "attention.v_proj.weight": v, "attention.v_proj.bias": vb,
        "attention.relative_position_bias.relative_position_bias_table": ours.attn.relative_position_bias_table,
        "attention.o_proj.weight": ours.attn.proj.weight, "attention.o_proj.bias": ours.attn.proj.bias,
        "layernorm_after.weight": ours.norm2.weight, "layernorm_after.bias": ours.norm2.bias,
        "mlp.fc1.weight": ours.mlp.fc1.weight, "mlp.fc1.bias": ours.mlp.fc1.bias,
        "mlp.fc2.weight": ours.mlp.fc2.weight, "mlp.fc2.bias": ours.mlp.fc2.bias,
    }
    if set(mapped) != {k for k in theirs.state_dict() if "index" not in k}:
        pytest.skip("this transformers version names the Swin layer's weights differently")
    theirs.load_state_dict({k: t.detach() for k, t in mapped.items()}, strict=False)
    x = torch.randn(2, size[0] * size[1], 60, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (ours(x, size) - theirs(x, size)[0]).abs().max().item()
    assert theirs.shift_size == shift and diff < 1e-4
