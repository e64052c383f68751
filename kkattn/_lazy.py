"""Package attributes that import their module on first use (PEP 562), so importing a package is cheap.

``kkattn``, ``lovlanet`` and ``lovlanet.data`` use it: the console scripts parse their arguments before
torch, timm or rasterio load, so ``--help`` and a mistyped flag answer at once.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional


def lazy_attributes(package: str, table: dict[str, tuple[str, Optional[str]]]) -> tuple[Callable, Callable]:
    """``(__getattr__, __dir__)`` for ``package``: ``table`` maps a public name to ``(module, attribute)``,
    the module relative to the package, the attribute None for the module itself."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attribute = table[name]
        value = importlib.import_module(module, package)
        if attribute is not None:
            value = getattr(value, attribute)
        namespace[name] = value  # later lookups find it without __getattr__
        return value

    def __dir__():
        return sorted({*namespace, *table})

    return __getattr__, __dir__
