"""A checked, generic name -> object registry shared by every kind of plugin.

Generators, datasets, feature extractors and metrics each get one ``Registry`` instance.
Registration rejects malformed names, duplicates (names and aliases share one namespace)
and objects of the wrong base class, so mistakes surface at import time rather than as a
confusing lookup failure deep inside a run. The CLI takes its choices from ``names()``.

Plugins come in two ways, neither touching genbench's files:

- an entry point in the registry's group (``genbench.generators``, ``genbench.datasets``,
  ``genbench.extractors``, ``genbench.metrics``) of any installed distribution: its name is
  the registered name, its value a class (``my_pkg.gens:MyGenerator``, registered under the
  entry point's name) or a module that registers its objects when imported. Entry points
  load on the registry's first lookup; one that fails to import or register is skipped with
  a one-line warning naming it, and the others still load;
- a ``module:Class`` path wherever a name is looked up (``generator =
  "my_pkg.gens:MyGenerator"`` in a spec): the module is imported and the class registered
  under that path.

``origin(name)`` says where each came from (``bench list`` shows it).
"""

from __future__ import annotations

import importlib
import re
import sys
import types
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from genbench.core.download import one_line
from genbench.core.errors import GenbenchError, UnknownNameError

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_OBJECT_PATH = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)
"""``package.module:Attribute``, checked before anything is imported."""

BUILT_IN = "built-in"


class Registry(Generic[T]):
    """Maps short lower-case names (plus optional aliases) to registered objects.

    ``base`` is checked at registration: a class must subclass it, any other object must be
    an instance of it.
    """

    def __init__(self, kind: str, base: type | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.base = base
        self.group = group
        """The entry-point group plugins register through (None: no plugins)."""
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._origins: dict[str, str] = {}
        self._plugins = "no" if group is None else "pending"
        self.broken: list[str] = []
        """One line per entry point that failed to load (also warned on stderr)."""

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

    def origin(self, name: str) -> str:
        """Where ``name`` came from: ``built-in``, ``plugin DIST VERSION (entry point)``,
        ``module:Class`` for a path a spec gave, or the module that registered it."""
        name = self.canonical(name)
        if name in self._origins:
            return self._origins[name]
        module = getattr(self._items[name], "__module__", "") or ""
        if not module or module == "genbench" or module.startswith("genbench."):
            return BUILT_IN
        return f"module {module}"

    def load_plugins(self) -> None:
        """Register the entry points of ``group`` (once; lookups call it)."""
        if self._plugins != "pending":
            return
        self._plugins = "loading"  # a plugin's own lookups during its import must not recurse
        try:
            from importlib.metadata import entry_points

            for ep in sorted(entry_points(group=self.group), key=lambda e: (e.name, e.value)):
                self._load_entry_point(ep)
        finally:
            self._plugins = "loaded"

    def _load_entry_point(self, ep: object) -> None:
        name, value = ep.name, ep.value  # type: ignore[attr-defined]
        dist = getattr(ep, "dist", None)
        where = f"{dist.name} {dist.version}" if dist is not None else "an unnamed distribution"
        origin = f"plugin {where} ({value})"
        before = set(self._items)
        try:
            obj = ep.load()  # type: ignore[attr-defined]
            if not isinstance(obj, types.ModuleType):
                known = [n for n, o in self._items.items() if o is obj]
                if not known:
                    self.add(name, obj)
        except Exception as exc:  # any failure of foreign code: skip it, keep the rest
            for added in set(self._items) - before:  # nothing half-registered stays
                del self._items[added]
            message = (
                f"{self.kind} plugin {name!r} ({value}, from {where}) failed to load and is "
                f"skipped: {one_line(exc)}"
            )
            self.broken.append(message)
            print(f"bench: warning: {message}", file=sys.stderr)
            return
        for added in set(self._items) - before:
            self._origins[added] = origin
        if not isinstance(obj, types.ModuleType):
            for n, o in self._items.items():
                if o is obj:
                    self._origins.setdefault(n, origin)

    def _import_path(self, path: str, where: str | None) -> str:
        """Register the object at ``module:Attribute`` under that path; returns the name it
        is registered under. A bad path, a failed import or an object of the wrong kind is
        a one-line ``GenbenchError``."""
        prefix = f"{where}: " if where else ""
        if not _OBJECT_PATH.match(path):
            raise UnknownNameError(self.kind, path, self.choices(), where)
        module_name, _, attr = path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise GenbenchError(
                f"{prefix}cannot import {module_name} for {self.kind} {path!r} "
                f"({one_line(exc)}); is its package installed or on PYTHONPATH?"
            ) from None
        obj = getattr(module, attr, None)
        if obj is None:
            raise GenbenchError(f"{prefix}module {module_name} has no {attr!r} ({self.kind})")
        for name, known in self._items.items():
            if known is obj:
                return name
        try:
            self._check_base(obj, path)
        except TypeError as exc:
            raise GenbenchError(f"{prefix}{exc}") from None
        self._items[path] = obj  # the path itself is the name (it is no folder name)
        self._origins[path] = path
        return path

    def register(self, name: str, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of ``add``."""

        def deco(obj: T) -> T:
            return self.add(name, obj, aliases)

        return deco

    def canonical(self, name: str, where: str | None = None) -> str:
        """The registered name for ``name`` or one of its aliases; ``UnknownNameError`` (a
        one-line usage error, prefixed with ``where``, listing the choices) otherwise."""
        self.load_plugins()
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        if isinstance(name, str) and ":" in name:
            return self._import_path(name, where)
        raise UnknownNameError(self.kind, name, self.choices(), where)

    def get(self, name: str, where: str | None = None) -> T:
        """The object registered as ``name`` (or an alias); see ``canonical``."""
        return self._items[self.canonical(name, where)]

    def names(self) -> list[str]:
        """Canonical names, sorted."""
        self.load_plugins()
        return sorted(self._items)

    def aliases(self, name: str) -> list[str]:
        self.load_plugins()
        return sorted(a for a, n in self._aliases.items() if n == name)

    def choices(self) -> list[str]:
        """Every accepted spelling: canonical names and aliases, sorted."""
        self.load_plugins()
        return sorted([*self._items, *self._aliases])

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._items)
