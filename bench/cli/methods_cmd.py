"""`bench methods list`: the registered PTQ methods with their parameters, defaults and a one-line doc."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("methods", help="list PTQ methods", description="PTQ methods (built-in and plugins)")
    sub = p.add_subparsers(dest="methods_command", required=True)
    ls = sub.add_parser("list", help="each method with its parameters and defaults")
    ls.set_defaults(func=run_list)


def method_rows() -> list[list[str]]:
    import methods  # noqa: F401  (registers the built-in methods)
    from methods.registry import METHOD_REGISTRY

    rows = []
    for name in sorted(METHOD_REGISTRY):
        cls = METHOD_REGISTRY[name]
        params = "\n".join(f"{f.name}: {f.type_name} = {f.default!r}" for f in cls.param_fields()) or "-"
        rows.append([name, params, cls.summary()])
    return rows


def run_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate
    print(tabulate(method_rows(), headers=["method", "parameters (type = default)", "description"],
                   maxcolwidths=[None, None, 60]))
    print("\nSet parameters with `bench quantize --method NAME --method-param key=value`.")
    return 0
