"""A checked, generic name -> object registry shared by every kind of plugin.

Generators, datasets, feature extractors and metrics each get one ``Registry`` instance.
Registration rejects malformed names, duplicates (names and aliases share one namespace)
and objects of the wrong base class, so mistakes surface at import time rather than as a
confusing lookup failure deep inside a run. The CLI takes its choices from ``names()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from genbench.core.errors import UnknownNameError

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """Maps short lower-case names (plus optional aliases) to registered objects.

    ``base`` is checked at registration: a class must subclass it, any other object must be
    an instance of it.
    """

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def _check_name(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"{self.kind} name {name!r} is malformed: use lower-case letters, digits and _"
            )
        if name in self._items or name in self._aliases:
            raise ValueError(f"{self.kind} name {name!r} is already registered")

    def _check_base(self, obj: object, name: str) -> None:
        if self.base is None:
            return
        ok = issubclass(obj, self.base) if isinstance(obj, type) else isinstance(obj, self.base)
        if not ok:
            raise TypeError(f"{self.kind} {name!r} must be a {self.base.__name__}, got {obj!r}")

    def add(self, name: str, obj: T, aliases: tuple[str, ...] = ()) -> T:
        """Register ``obj`` under ``name`` and ``aliases``; returns ``obj``."""
        for n in (name, *aliases):
            self._check_name(n)
        if len(set((name, *aliases))) != len(aliases) + 1:
            raise ValueError(f"{self.kind} {name!r}: aliases repeat a name")
        self._check_base(obj, name)
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name
        return obj

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of ``add``."""

        def deco(obj: T) -> T:
            return self.add(name, obj, aliases)

        return deco

    def canonical(self, name: str, where: str | None = None) -> str:
        """The registered name for ``name`` or one of its aliases; ``UnknownNameError`` (a
        one-line usage error, prefixed with ``where``, listing the choices) otherwise."""
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UnknownNameError(self.kind, name, self.choices(), where)

    def get(self, name: str, where: str | None = None) -> T:
        """The object registered as ``name`` (or an alias); see ``canonical``."""
        return self._items[self.canonical(name, where)]

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        return sorted(self._items)

    def aliases(self, name: str) -> list[str]:
        return sorted(a for a, n in self._aliases.items() if n == name)

    def choices(self) -> list[str]:
        """Every accepted spelling: canonical names and aliases, sorted."""
        return sorted([*self._items, *self._aliases])

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
