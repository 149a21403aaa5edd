"""`bench` command line. Each command group lives in its own module exposing `register(subparsers)`.

Commands set `args.func(args) -> int`; `main` turns the project's user-facing errors (BenchError)
into one line on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from bench.cli.checkout import other_checkout_note
from bench.errors import BenchError

# One module per command group; a module that is not written yet is skipped.
COMMAND_MODULES = [
    "bench.cli.eval_cmd",      # bench eval
    "bench.cli.models_cmd",    # bench models list|fetch
    "bench.cli.data_cmd",      # bench data check|make-lr
    "bench.cli.methods_cmd",   # bench methods list
    "bench.cli.quantize_cmd",  # bench quantize
    "bench.cli.run_cmd",       # bench run, bench results
    "bench.cli.report_cmd",    # bench table|plot|visual
    "bench.cli.cost_cmd",      # bench cost
    "bench.cli.train_cmd",     # bench train
    "bench.cli.export_cmd",    # bench export (packed safetensors, ONNX QDQ)
    "bench.cli.latency_cmd",   # bench latency (FP32 vs quantized, one runtime)
    "bench.cli.sensitivity_cmd",  # bench sensitivity (per-layer, mixed precision)
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description="PTQ benchmark for image super-resolution")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="python file that registers extra methods/models (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(sub)
    return parser


def _preload_plugins(argv: list[str]) -> None:
    # Plugins must be imported before parsing, so that their methods appear in choices and help.
    from bench.plugins import load_plugin
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            load_plugin(argv[i + 1])
        elif arg.startswith("--plugin="):
            load_plugin(arg.split("=", 1)[1])


def _interrupted(args: argparse.Namespace | None, argv: list[str]) -> str:
    # A command that leaves resumable work behind (`bench run`) says where it is and how to go on.
    hint = getattr(args, "on_interrupt", None)
    if hint is not None:
        try:
            return hint(args, argv)
        except Exception:  # the hint must never hide the interrupt
            pass
    return "bench: interrupted"


def main(argv: list[str] | None = None) -> int:
    from bench.threads import prepare_runtime
    prepare_runtime()  # before anything imports torch
    argv = list(sys.argv[1:] if argv is None else argv)
    note = other_checkout_note()
    if note:
        print(note, file=sys.stderr)
    args = None
    try:
        _preload_plugins(argv)
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args, argv), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
