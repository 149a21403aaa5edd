"""Packed low-bit files (bench.export.packed): byte layout, bit-exact round trip, sizes against the cost model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench.cli import main
from bench.errors import CheckpointError
from bench.export.packed import load_packed, pack_codes, packed_info, save_packed, unpack_codes, weight_codes
from bench.quant import QuantConfig, quantize_model, quantizers, weight_quantizers


class ConvLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)
        self.mix = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tail(torch.relu(self.body(torch.relu(self.head(x)))))
        return self.mix(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _calibrated(model: nn.Module, bits: int, clip: float = 0.8) -> nn.Module:
    """Bounds at `clip` x the min/max of each tensor (some values clipped, the interesting case)."""
    torch.manual_seed(0)
    qmodel = quantize_model(model, QuantConfig(bits, bits, scope="ptq4sr"))
    for _, q, w in weight_quantizers(qmodel):
        if q.per_channel:
            flat = w.detach().flatten(1)
            q.set_bounds(clip * flat.min(1).values, clip * flat.max(1).values)
        else:
            q.set_bounds(clip * float(w.min()), clip * float(w.max()))
    for _, q in quantizers(qmodel):
        if not q.is_weight:
            q.set_bounds(-0.3, 0.9)
    return qmodel


def test_codes_are_packed_least_significant_bit_first():
    # 2 bits: 1 = 10, 2 = 01, 3 = 11 (LSB first) -> 0b00111001 = 57
    assert pack_codes(np.array([1, 2, 3]), 2).tolist() == [57]
    # 3 bits: 5 -> 1,0,1; 7 -> 1,1,1; 1 -> 1,0,0 -> bits 1,0,1,1,1,1,1,0 | 0 -> bytes 125, 0
    assert pack_codes(np.array([5, 7, 1]), 3).tolist() == [125, 0]
    rng = np.random.default_rng(0)
    for bits in range(2, 9):
        codes = rng.integers(0, 2 ** bits, 1001).astype(np.uint8)
        packed = pack_codes(codes, bits)
        assert packed.size == -(-1001 * bits // 8)
        assert np.array_equal(unpack_codes(packed, bits, 1001), codes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dequantized_weights_and_outputs_equal_fake_quant_bit_for_bit(tmp_path, bits):
    torch.manual_seed(0)
    model = ConvLinear().eval()
    qmodel = _calibrated(model, bits)
    path = tmp_path / "m.safetensors"
    save_packed(qmodel, path, {"model": "convlinear"})
    loaded = load_packed(path, ConvLinear()).eval()  # another random init: nothing comes from it
    for (_, q, w), (_, lq, lw) in zip(weight_quantizers(qmodel), weight_quantizers(loaded)):
        codes = weight_codes(q, w)
        assert int(codes.max()) <= 2 ** q.bits - 1  # ptq4sr: the edge convs have 8 bits, the body `bits`
        assert torch.equal(lw, q(w.detach())), "dequantized weight differs from the fake-quant weight"
        assert lq.enabled is False
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), qmodel(x))
    assert loaded.quant_meta == {"model": "convlinear"}
    assert [n for n, q in quantizers(loaded) if not q.is_weight and not q.calibrated] == []


def test_swinir_light_x4_packed_sizes_match_the_cost_model(tmp_path):
    """Tensor payload = the cost model's size + the relative-position-bias tables the cost model leaves out
    (following the paper); the file adds the safetensors header."""
    from bench.cost import analyze
    from models import create_model

    fp_model = create_model("swinir-light", 4, weights="random")
    expected = {4: 1_172_784, 3: 1_086_384, 2: 999_984}
    for bits, cost_bytes in expected.items():
        qmodel = quantize_model(fp_model, QuantConfig(bits, bits))
        for _, q in quantizers(qmodel):
            q.set_bounds(-0.1, 0.1)
        info = save_packed(qmodel, tmp_path / f"w{bits}.safetensors")
        report = analyze(fp_model, "swinir-light", 4, qmodel)
        assert report.size_bytes == cost_bytes
        assert report.params_excluded == 32_400
        payload = info.file_bytes - info.header_bytes
        assert payload == cost_bytes + 4 * report.params_excluded
        assert info.code_bytes == 691_200 * bits // 8
        assert info == packed_info(tmp_path / f"w{bits}.safetensors")


def test_packed_file_for_another_model_is_refused(tmp_path):
    from models import create_model

    qmodel = _calibrated(ConvLinear(), 4)
    save_packed(qmodel, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError,
                       match=r"was packed for another model: 4 quantized weights, this IMDN has 46; export this model again"):
        load_packed(tmp_path / "m.safetensors", create_model("imdn", 2, weights="random"))


def test_eval_packed_missing_file_is_one_line(tmp_path, capsys):
    code = main(["eval", "--model", "imdn", "--scale", "2", "--dataset", "Set5", "--packed", str(tmp_path / "x"),
                 "--threads", "1"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (f"bench: error: --packed {tmp_path / 'x'}: file not found; give a file "
                                               f"written by `bench export --format packed`")


PSNR_IMDN_X2_W8A8_SET5_FIRST2 = 41.03  # measured: baby + bird, fp-edges MinMax on 4 patches of 32x32


def test_imdn_x2_w8a8_packed_round_trip_on_set5(tmp_path, benchmark_root, train_root, weights_dir):
    """Official IMDN x2, MinMax W8A8: the packed file's Set5 PSNR equals the fake-quant model's."""
    from bench.data.calib import calibration_batch
    from bench.data.dataset import load_dataset
    from bench.evaluate import evaluate
    from bench.quant import CalibContext, quantize_with_method
    from methods import create_method
    from models import create_model

    fp_model = create_model("imdn", 2, weights=weights_dir / "imdn" / "IMDN_x2.pth")
    batch = calibration_batch(train_root, 2, n=4, patch=32, seed=0)
    qmodel, _ = quantize_with_method(fp_model, create_method("minmax"), 8, 8,
                                     CalibContext(fp_model=fp_model, calib_batch=batch, progress=False),
                                     scope="fp-edges")
    info = save_packed(qmodel, tmp_path / "imdn.safetensors")
    assert info.code_bytes == info.quantized_weights  # 8 bits: one byte per weight
    loaded = load_packed(tmp_path / "imdn.safetensors", create_model("imdn", 2, weights="random"))
    images = list(load_dataset("Set5", 2, data_root=benchmark_root))[:2]
    fake = evaluate(qmodel, images, 2, "cpu", lpips=False, progress=False, return_outputs=True)
    packed = evaluate(loaded, images, 2, "cpu", lpips=False, progress=False, return_outputs=True)
    assert all(np.array_equal(fake.outputs[k], packed.outputs[k]) for k in fake.outputs)
    assert packed.psnr == fake.psnr
    assert round(packed.psnr, 2) == PSNR_IMDN_X2_W8A8_SET5_FIRST2

