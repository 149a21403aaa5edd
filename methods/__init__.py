"""PTQ methods. Importing the package registers every built-in method (see `methods.registry`).

Third-party methods: a `PTQMethod` subclass decorated with `@register_method("name")` in any file,
loaded with `bench --plugin FILE.py` (example: examples/my_method.py).
"""
# Each module registers its methods when imported; the names are not used here.
from methods import (  # noqa: F401
    adaround,
    brecq,  # brecq, qdrop
    compsrt,
    condiquant,
    dobi,
    emmse,
    minmax,
    noisyquant,
    percentile,
    ptq4sr,
    ptq4vit,
    repq_vit,
    twodquant,  # 2dquant
)
from methods.base import PTQMethod, RangeRuleMethod, set_bounds_from_rule
from methods.registry import create_method, get_method_class, list_methods, register_method

__all__ = ["PTQMethod", "RangeRuleMethod", "set_bounds_from_rule", "create_method", "get_method_class",
           "list_methods", "register_method"]
