"""What the CPU's int8 and bf16 instructions are, for the runtimes' integer and bf16 kernels.

On x86 without VNNI (AVX2 or AVX-512 alone) oneDNN (OpenVINO) and MLAS (onnxruntime) multiply uint8 activations by
int8 weights with `vpmaddubsw`, which adds two u8 x s8 products into int16 and saturates: 255 * 127 * 2 = 64,770
does not fit. With 8-bit weights the integer graph then differs from the fake-quant model (31-33 output steps on
tests/test_deploy.py's small CNN, -7.6 dB on IMDN x2 Set5 in OpenVINO); with 7-bit weights (|code| <= 63,
onnxruntime's `reduce_range`) the pairs fit and the runtimes agree with fake quant within one step. VNNI
(`vpdpbusd`) and AMX accumulate in int32 and do not saturate.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The flags of /proc/cpuinfo (empty where it does not exist, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_int8_dot_product() -> bool | None:
    """True with VNNI/AMX (int8 products accumulate in int32), False without, None when unknown."""
    flags = cpu_flags()
    if not flags:
        return None
    return any(flag in flags for flag in VNNI_FLAGS)


def has_bf16() -> bool | None:
    flags = cpu_flags()
    return any(flag in flags for flag in BF16_FLAGS) if flags else None


def saturation_note(w_bits: int) -> str | None:
    """A warning for 8-bit weights on a CPU whose int8 kernels saturate, else None."""
    if w_bits >= 8 and has_int8_dot_product() is False:
        return ("this CPU has no VNNI/AMX: its int8 kernels saturate u8 x s8 pairs in int16, so an 8-bit-weight model "
                "runs less accurately than its fake quant; quantize with --w-bits 7 for an exact integer graph "
                "(onnxruntime's reduce_range)")
    return None
