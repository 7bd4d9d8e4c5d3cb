"""Package attributes imported on first use, so that ``import vlm_lens`` (and ``vlm-lens --help``) stays light.

A package that re-exports names from heavy submodules (torch, transformers, matplotlib) calls
:func:`lazy_exports` in its ``__init__`` with ``name -> "module:attribute"``; the module is imported, and the
attribute cached in the package, the first time the name is read (PEP 562). Static tools see the same names through
the package's ``if TYPE_CHECKING:`` imports.

Example:
    >>> import types
    >>> pkg = types.ModuleType("pkg")
    >>> pkg.__getattr__, pkg.__dir__ = lazy_exports(vars(pkg), {"dumps": "json:dumps"})
    >>> pkg.dumps([1])
    '[1]'
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(namespace: dict[str, Any], exports: Mapping[str, str], *,
                 removed: Mapping[str, str] | None = None,
                 before: Callable[[], None] | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package namespace whose ``exports`` load on first use.

    Args:
        namespace: The package's ``globals()``; loaded attributes are cached there.
        exports: Public name -> ``"module:attribute"`` (``"module"`` alone for a submodule); relative module names
            are resolved against the package.
        removed: Former public names -> the message that says what replaced them (raised as
            :class:`~vlm_lens.core.errors.VlmLensError` on access).
        before: Called once before the first export is loaded (e.g. to import the modules that register
            extensions).
    """
    package = namespace.get("__name__", "")
    state = {"ready": before is None}

    def __getattr__(name: str) -> Any:
        if removed and name in removed:
            from .errors import VlmLensError

            raise VlmLensError(removed[name])
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if not state["ready"]:
            state["ready"] = True
            before()  # type: ignore[misc]
        module_name, _, attribute = exports[name].partition(":")
        module = importlib.import_module(module_name, package)
        value = getattr(module, attribute) if attribute else module
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
