"""W4A4 fake-quant / FP inference time, with the reference forward (spec §2.3, no weight cache: the code before the
fast paths) and with the fast paths, in one process, FP and fake-quant timed in turns (results/reference/speed.md).

    python scripts/fake_quant_ratio.py          # needs the shared folder (BENCH_SHARED, default ../shared)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench.threads import configure_threads, prepare_runtime  # noqa: E402

prepare_runtime()

import torch  # noqa: E402
from test_bench_dobi import _w4a4, interleaved_ratio  # noqa: E402

from bench.data.calib import calibration_batch  # noqa: E402
from bench.quant import FakeQuantizer, fake_quantize  # noqa: E402
from models import create_model  # noqa: E402

SHARED = Path(os.environ.get("BENCH_SHARED", REPO.parent / "shared"))


def reference_forward(self: FakeQuantizer, x: torch.Tensor) -> torch.Tensor:
    return fake_quantize(x, self._broadcast(self.lower, x), self._broadcast(self.upper, x), self.bits)


def main() -> int:
    configure_threads(None)
    torch.manual_seed(0)
    train = SHARED / "data" / "train"
    cases = {
        "swinir-light x4 (2dquant scope)": (create_model("swinir-light", 4, weights="random"), 4),
        "imdn x2 (ptq4sr scope)": (create_model("imdn", 2, weights=SHARED / "weights" / "imdn" / "IMDN_x2.pth"), 2),
    }
    fast = FakeQuantizer._forward_inference
    for name, (model, scale) in cases.items():
        batch = calibration_batch(train, scale, n=8, patch=64, seed=0)
        qmodel = _w4a4(model, batch[:2])
        for label, forward in (("reference", reference_forward), ("fast paths", fast)):
            FakeQuantizer._forward_inference = forward
            ratio, fp, fq = interleaved_ratio(model, qmodel, batch)
            print(f"{name}, {label}: FP {fp:.3f} s, fake-quant {fq:.3f} s, ratio {ratio:.2f}", flush=True)
        FakeQuantizer._forward_inference = fast
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
