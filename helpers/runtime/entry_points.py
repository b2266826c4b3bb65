"""A package's stable entry point: names re-exported from its modules, each module imported on first use.

``from helpers.train import QwenVLSFTTrainer`` then imports ``helpers.train.trainer`` alone, so a light
entry (the parameter rules, the runner) never pays for, or hears the import-time warnings of, the
heavy libraries behind the others.
"""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``'s ``__init__``: ``modules`` maps a submodule to the names it exports."""
    where = {name: f"{package}.{module}" for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}; it exports {sorted(where)}")
        return getattr(importlib.import_module(where[name]), name)

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
