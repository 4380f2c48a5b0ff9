"""Name -> class registries, as in Dassl (``dassl.utils.registry``).

Adding a trainer, dataset, evaluator or domain reader is one decorated class plus one import::

    @TRAINER_REGISTRY.register()
    class MyTrainer(TrainerXU): ...
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

from engine.utils.errors import UserError


class Registry:
    """A mapping from a name (by default the class name) to a class or function."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}

    def _do_register(self, name: str, obj: Any, force: bool = False) -> None:
        if name in self._obj_map and not force:
            raise KeyError(f"An object named '{name}' was already registered in '{self._name}' registry")
        self._obj_map[name] = obj

    def register(self, obj: Any = None, force: bool = False, name: str | None = None) -> Callable | None:
        """Register ``obj`` under its ``__name__`` (or ``name``); usable as a decorator."""
        if obj is None:
            def wrapper(fn_or_class: Any) -> Any:
                self._do_register(name or fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class

            return wrapper
        self._do_register(name or obj.__name__, obj, force=force)
        return None

    def get(self, name: str) -> Any:
        if name not in self._obj_map:
            known = ", ".join(sorted(self._obj_map)) or "(none)"
            raise UserError(f"'{name}' is not a registered {self._name.lower()}; registered: {known}")
        return self._obj_map[name]

    def registered_names(self) -> list[str]:
        return sorted(self._obj_map)

    def __contains__(self, name: str) -> bool:
        return name in self._obj_map

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self._obj_map.items())
