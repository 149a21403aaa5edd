"""Command-line options shared by several commands (one definition, one help text)."""
from __future__ import annotations

from pathlib import Path

# Kept as text: importing bench.quant.scopes here would load torch for every `bench --help`.
# tests/test_scopes.py checks that it names every registered scope.
SCOPE_NAMES = ("2dquant", "ptq4sr", "fp-edges", "2dquant+convs", "deploy", "deploy-ort")
SCOPE_HELP = f"quantization scope: auto (the model's default), {', '.join(SCOPE_NAMES)} (docs/scopes.md)"


def bits_or_mixed(text: str) -> int | str:
    """`--bits` value: a bit-width, or "mixed:B" (mixed precision at the size and BOPs of uniform WBAB)."""
    return text if text.strip().lower().startswith("mixed:") else int(text)


def add_quantization_args(parser, mixed: bool = False) -> None:
    """Bit-widths, scope and calibration options of `bench quantize` and `bench eval --method`.
    `mixed=True`: --bits also takes mixed:B (bench quantize)."""
    parser.add_argument("--bits", type=bits_or_mixed if mixed else int, default=4,
                        help="weight and activation bit-width, 2..8 (default 4)"
                             + ("; or mixed:B, per-layer bits within the size and BOPs of uniform WBAB" if mixed else ""))
    parser.add_argument("--w-bits", type=int, default=None, help="weight bit-width (overrides --bits)")
    parser.add_argument("--a-bits", type=int, default=None, help="activation bit-width (overrides --bits)")
    parser.add_argument("--scope", default="auto", help=SCOPE_HELP)
    parser.add_argument("--calib", type=Path, default=None, metavar="DIR",
                        help="folder of HR training images for the calibration patches (never a test set)")
    parser.add_argument("--calib-n", type=int, default=32, help="number of LR calibration patches (default 32)")
    parser.add_argument("--calib-patch", type=int, default=64, help="LR patch size (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method-param", action="append", default=[], metavar="KEY=VALUE",
                        help="method hyper-parameter (repeatable), e.g. p=1e-4")
