"""The quantizer-type registry itself: `QUANTIZER_TYPES` and `@register_quantizer_type("name")`.

Kept apart from `bench.quant.qtypes` (lookup, `make_quantizer`, `replace_quantizer`) because the built-in types
register themselves here when imported, and qtypes imports them so that a lookup always sees them: with the
registry in qtypes, qtypes and the type modules imported each other. Both names stay importable from qtypes.
"""
from __future__ import annotations

from collections.abc import Callable

from bench.quant.quantizer import FakeQuantizer

QUANTIZER_TYPES: dict[str, type[FakeQuantizer]] = {}


def register_quantizer_type(name: str) -> Callable[[type[FakeQuantizer]], type[FakeQuantizer]]:
    """Class decorator: register a FakeQuantizer subclass under `name` (also set as its `quant_type`)."""
    def decorate(cls: type[FakeQuantizer]) -> type[FakeQuantizer]:
        if not (isinstance(cls, type) and issubclass(cls, FakeQuantizer)):
            raise TypeError(f"quantizer type {name!r} must subclass bench.quant.FakeQuantizer")
        if name in QUANTIZER_TYPES and QUANTIZER_TYPES[name] is not cls:
            raise ValueError(f"quantizer type {name!r} is already registered ({QUANTIZER_TYPES[name].__name__})")
        cls.quant_type = name
        QUANTIZER_TYPES[name] = cls
        return cls
    return decorate


register_quantizer_type("uniform")(FakeQuantizer)
