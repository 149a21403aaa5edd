"""The core's extension contract: quantizer types, learned quantizer state, rewritten FP tensors, save/load."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bench.errors import CheckpointError, ConfigError
from bench.quant import FakeQuantizer, QuantConfig, quantize_model, quantizers
from bench.quant.io import load_quantized, save_quantized
from bench.quant.qtypes import (
    QUANTIZER_TYPES,
    list_quantizer_types,
    make_quantizer,
    register_quantizer_type,
    replace_quantizer,
)
from bench.quant.surgery import rewrite_fp_tensor, rewritten_fp_tensors


class _Offset(FakeQuantizer):
    """Test type: uniform fake-quant plus a learned per-tensor offset (state beyond the bounds)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.offset = torch.zeros(())

    def forward(self, x):
        return super().forward(x) + self.offset

    def quant_state(self):
        return {"offset": self.offset.clone()}

    def load_quant_state(self, state):
        self.offset = state["offset"].clone()


@pytest.fixture()
def offset_type():
    register_quantizer_type("test-offset")(_Offset)
    yield _Offset
    QUANTIZER_TYPES.pop("test-offset")


def _toy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)).eval()


def _calibrated(model: nn.Module) -> nn.Module:
    qmodel = quantize_model(model, QuantConfig(4, 4, scope="ptq4sr"))
    for i, (_, q) in enumerate(quantizers(qmodel)):
        q.set_bounds(-1.0 - 0.1 * i, 1.0 + 0.05 * i)
    return qmodel


def test_uniform_is_the_registered_default():
    assert "uniform" in list_quantizer_types()
    assert FakeQuantizer.quant_type == "uniform"
    assert FakeQuantizer(4).quant_state() == {}


def test_unknown_type_and_layout_mismatch_are_config_errors():
    q = FakeQuantizer(4)
    with pytest.raises(ConfigError, match="unknown quantizer type 'nope'"):
        make_quantizer("nope", q)
    qmodel = _calibrated(_toy())
    name, _ = quantizers(qmodel)[0]  # a per-channel weight quantizer of the ptq4sr scope
    with pytest.raises(ConfigError, match="layout must match"):
        replace_quantizer(qmodel, name, FakeQuantizer(4))


def test_swapped_type_and_its_state_survive_save_and_load(tmp_path, offset_type):
    fp = _toy()
    qmodel = _calibrated(fp)
    name, old = quantizers(qmodel)[1]  # the first conv's input quantizer
    new = make_quantizer("test-offset", old)
    new.set_bounds(*old.bounds())
    new.offset = torch.tensor(0.25)
    replace_quantizer(qmodel, name, new)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        expected = qmodel(x)
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "q.pt"), fp)
    swapped = dict(quantizers(loaded))[name]
    assert type(swapped) is _Offset and float(swapped.offset) == 0.25
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_unregistered_type_in_a_file_names_the_missing_plugin(tmp_path, offset_type):
    fp = _toy()
    qmodel = _calibrated(fp)
    name, old = quantizers(qmodel)[1]
    new = make_quantizer("test-offset", old)
    new.set_bounds(*old.bounds())
    replace_quantizer(qmodel, name, new)
    path = save_quantized(qmodel, tmp_path / "q.pt")
    QUANTIZER_TYPES.pop("test-offset")
    try:
        with pytest.raises(CheckpointError, match="type 'test-offset'.*load the plugin"):
            load_quantized(path, fp)
    finally:
        QUANTIZER_TYPES["test-offset"] = _Offset


def test_rewritten_fp_tensors_are_saved_and_the_fp_model_is_untouched(tmp_path):
    fp = _toy()
    original = fp[0].weight.detach().clone()
    qmodel = _calibrated(fp)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        before = qmodel(x)  # fills the weight cache: the rewrite must invalidate it
    rewrite_fp_tensor(qmodel, "0.weight", qmodel[0].weight * 0.5)
    rewrite_fp_tensor(qmodel, "2.bias", torch.full((3,), 0.125))
    assert list(rewritten_fp_tensors(qmodel)) == ["0.weight", "2.bias"]
    assert torch.equal(fp[0].weight, original)
    with torch.no_grad():
        after = qmodel(x)
    assert not torch.equal(after, before)
    loaded = load_quantized(save_quantized(qmodel, tmp_path / "q.pt"), fp)
    assert torch.equal(loaded[2].bias, torch.full((3,), 0.125))
    with torch.no_grad():
        assert torch.equal(loaded(x), after)
    with pytest.raises(ConfigError, match="shape"):
        rewrite_fp_tensor(qmodel, "2.bias", torch.zeros(4))
    with pytest.raises(ConfigError, match="no parameter or buffer"):
        rewrite_fp_tensor(qmodel, "9.weight", torch.zeros(1))


def test_version_1_files_still_load(tmp_path):
    fp = _toy()
    qmodel = _calibrated(fp)
    path = save_quantized(qmodel, tmp_path / "q.pt")
    record = torch.load(path, weights_only=True)
    record["version"] = 1
    record.pop("rewritten")
    for entry in record["quantizers"].values():
        entry.pop("qtype"), entry.pop("state")
    torch.save(record, path)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(load_quantized(path, fp)(x), qmodel(x))
