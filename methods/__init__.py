"""PTQ methods. Importing the package registers every built-in method (see `methods.registry`).

Third-party methods: a `PTQMethod` subclass decorated with `@register_method("name")` in any file,
loaded with `bench --plugin FILE.py` (example: examples/my_method.py).
"""
import importlib

from methods import dobi, emmse, minmax, percentile  # noqa: F401
from methods.base import PTQMethod, RangeRuleMethod, set_bounds_from_rule
from methods.registry import create_method, get_method_class, list_methods, register_method

# Written on top of the core by another module owner; the package must work before they exist.
for _optional in ("ptq4sr", "twodquant", "adaround", "brecq", "noisyquant", "condiquant", "ptq4vit",
                  "repq_vit"):
    try:
        importlib.import_module(f"methods.{_optional}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"methods.{_optional}":
            raise

__all__ = ["PTQMethod", "RangeRuleMethod", "set_bounds_from_rule", "create_method", "get_method_class",
           "list_methods", "register_method"]
