"""`bench cost --model NAME --scale S [--bits 4 3 2] [--lr-size 128]`: parameters, compression, MACs, speed-up."""
from __future__ import annotations

import argparse

from tabulate import tabulate

from bench.cli.options import SCOPE_HELP


def register(subparsers) -> None:
    cost = subparsers.add_parser("cost", help="theoretical cost of a model: parameters, compression, ops, speed-up",
                                 description="Counts from the model itself (parameters, forward hooks on Conv2d/"
                                             "Linear/MatMul) at a fixed LR input size; no weights needed.")
    cost.add_argument("--model", required=True, help="registered model name (see `bench models list`)")
    cost.add_argument("--scale", type=int, required=True)
    cost.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2], help="W=A bit-widths (default 4 3 2)")
    cost.add_argument("--lr-size", type=int, default=128, help="LR input side for MAC counting (default 128)")
    cost.add_argument("--scope", default="auto", help=SCOPE_HELP)
    cost.set_defaults(func=cost_command)


def _g(macs: float) -> str:
    return f"{macs / 1e9:.4f} G"


def _breakdown(b) -> str:
    return f"{_g(b.total)} = Linear+BMM {_g(b.linear_bmm)} + conv {_g(b.conv)} + other {_g(b.other)}"


def cost_command(args: argparse.Namespace) -> int:
    from bench.cost import EXCLUDED_PARAMETER_PATTERNS, model_cost
    from bench.errors import ConfigError
    from models.registry import get_entry

    try:
        entry = get_entry(args.model)
    except KeyError as exc:
        raise ConfigError(str(exc)) from None
    if args.scale not in entry.scales:
        raise ConfigError(f"model {args.model!r} has no x{args.scale}; its scales are "
                          f"{', '.join(map(str, entry.scales))}")
    from bench.quant.quantizer import MAX_BITS, MIN_BITS
    for bits in args.bits:
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ConfigError(f"--bits {bits}: use bit-widths between {MIN_BITS} and {MAX_BITS} (e.g. --bits 4 3 2)")
    fp, reports = model_cost(args.model, args.scale, [(b, b) for b in args.bits], (args.lr_size, args.lr_size),
                             args.scope)
    excluded = "/".join(EXCLUDED_PARAMETER_PATTERNS)
    quantized = reports[0].quantized_weights if reports else 0
    scope = reports[0].scope if reports else args.scope
    print(f"{args.model} x{args.scale}, LR input {args.lr_size}x{args.lr_size}, quantization scope {scope}")
    rel_pos = " (excluding rel-pos tables)" if fp.params_excluded else ""
    print(f"{fp.params:,} parameters{rel_pos}; {fp.params_excluded:,} excluded ({excluded}); "
          f"{quantized:,} quantized weights ({100 * quantized / fp.params:.2f}%)")
    if fp.paper_rule == "counted":
        print(f"MACs, counted by hooks: {_breakdown(fp.counted_fp)} (no paper rule for this model: "
              f"ops use these counts)")
    else:
        rule = fp.paper_rule.removeprefix("paper:")
        print(f"MACs, paper rule ({rule}): {_breakdown(fp.paper_fp)}")
        print(f"MACs, counted by hooks:{' ' * max(0, len(rule) - 2)} {_breakdown(fp.counted_fp)}")
    bits = "/".join(map(str, args.bits))
    print(f"compression {'/'.join(f'{r.compression:.2f}' for r in reports)} and speed-up "
          f"{'/'.join(f'{r.speedup():.2f}' for r in reports)} at {bits} bits "
          f"(ops linear in bits, {'paper rule' if fp.paper_rule != 'counted' else 'counted MACs'}); "
          f"BOPs speed-up {'/'.join(f'{r.bops_speedup():.2f}' for r in reports)}")
    rows = [["FP32", fp.size_bytes, "1.000", _g(fp.fp_ops()), "1.00", "1.00", _g(fp.fp_ops("counted")), "1.00"]]
    rows += [[f"W{b}A{b}", r.size_bytes, f"{r.compression:.3f}", _g(r.ops()), f"{r.speedup():.2f}",
              f"{r.bops_speedup():.2f}", _g(r.ops("counted")), f"{r.speedup('counted'):.2f}"]
             for b, r in zip(args.bits, reports)]
    print(tabulate(rows, headers=["bits", "size (bytes)", "compression", "ops (paper)", "speed-up",
                                  "BOPs speed-up", "ops (counted)", "speed-up (counted)"],
                   disable_numparse=True))
    return 0
