"""Method registry: `@register_method(name)` on a `PTQMethod` subclass, `create_method(name, **params)`."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from methods.base import PTQMethod

METHOD_REGISTRY: dict[str, type["PTQMethod"]] = {}


class UnknownMethodError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def register_method(name: str):
    """Class decorator: make a `PTQMethod` subclass available as `name`."""
    def decorator(cls):
        if name in METHOD_REGISTRY and METHOD_REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHOD_REGISTRY[name] = cls
        return cls
    return decorator


def get_method_class(name: str) -> type["PTQMethod"]:
    if name not in METHOD_REGISTRY:
        known = ", ".join(sorted(METHOD_REGISTRY))
        raise UnknownMethodError(f"unknown method {name!r}; known methods: {known} (see `bench methods list`, "
                                 f"or load your own with --plugin FILE.py)")
    return METHOD_REGISTRY[name]


def create_method(name: str, **params) -> "PTQMethod":
    return get_method_class(name)(**params)


def list_methods() -> list[str]:
    return sorted(METHOD_REGISTRY)
