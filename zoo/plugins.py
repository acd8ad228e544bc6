"""Plugin manager: entry-point discovery, blocking, failure isolation and the registries.

Plugins are found through the ``zoo`` entry-point group, first-party ones included. A plugin
whose import or hook raises, that registers a name already taken, or that was built against
another plugin API version is reported (:func:`failures`) and the others keep working.
Set ``ZOO_DISABLE_PLUGINS=name1,name2`` to skip plugins by entry-point name; :func:`disabled`
lists the plugins skipped that way.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata

import pluggy

from zoo import API_VERSION, hookspecs

ENTRY_POINT_GROUP = "zoo"
DISABLE_ENV = "ZOO_DISABLE_PLUGINS"
KINDS = ("methods", "networks", "datasets", "samplers", "metrics")
# Core modules that register the shared networks, datasets, samplers and metrics through the
# same hooks a plugin uses.
CORE_MODULES = ("zoo.nets", "zoo.data", "zoo.diffusion.samplers", "zoo.diffusion.fast_samplers",
                "zoo.metrics")


class UnknownNameError(KeyError, ValueError):
    """A name that no plugin registered; the message lists the valid ones."""

    def __str__(self):
        return str(self.args[0])


class DuplicateNameError(ValueError):
    """Two plugins registered the same name."""


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)


@dataclass
class PluginFailure:
    name: str
    distribution: str
    error: str


class Registry:
    """Names to objects of one kind (methods, networks, ...), remembering who registered each."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, object] = {}
        self._sources: dict[str, str] = {}

    def add(self, name: str, obj, source: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"{source}: a {self.kind[:-1]} name must be a non-empty string, got {name!r}"
            )
        if name in self._items:
            raise DuplicateNameError(
                f"{self.kind[:-1]} {name!r} is registered twice: by {self._sources[name]} "
                f"and by {source}"
            )
        self._items[name] = obj
        self._sources[name] = source

    def get(self, name: str):
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(sorted(self._items)) or "(none registered)"
            raise UnknownNameError(f"unknown {self.kind[:-1]} {name!r}; valid: {valid}") from None

    def source(self, name: str) -> str:
        return self._sources[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name) -> bool:
        return name in self._items

    def items(self):
        return sorted(self._items.items())


class _State:
    def __init__(self):
        self.pm = pluggy.PluginManager("zoo")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self.disabled: list[PluginInfo] = []
        self.registries: dict[str, Registry] | None = None
        self.loaded = False


_state = _State()


def _disabled() -> set[str]:
    return {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}


def _dist_of(ep) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def _check_api(module, name: str) -> None:
    declared = getattr(module, "ZOO_API_VERSION", API_VERSION)
    if declared != API_VERSION:
        raise RuntimeError(
            f"plugin {name!r} was built against zoo plugin API {declared}, "
            f"this zoo provides API {API_VERSION}"
        )


def _load() -> None:
    if _state.loaded:
        return
    _state.loaded = True
    import zoo

    for modname in CORE_MODULES:
        module = importlib.import_module(modname)
        _state.pm.register(module, name=modname)
        _state.info[modname] = PluginInfo(modname, zoo.DISTRIBUTION, zoo.__version__)
    blocked = _disabled()
    for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if _state.pm.has_plugin(ep.name):
            continue
        dist, version = _dist_of(ep)
        if ep.name in blocked:
            _state.disabled.append(PluginInfo(ep.name, dist, version))
            continue
        try:
            module = ep.load()
            _check_api(module, ep.name)
            _state.pm.register(module, name=ep.name)
        except Exception as exc:  # isolate: one broken plugin must not take the others down
            _state.failures.append(PluginFailure(ep.name, dist, f"{type(exc).__name__}: {exc}"))
            continue
        _state.info[ep.name] = PluginInfo(ep.name, dist, version)


def reset() -> None:
    """Forget loaded plugins; the next look-up discovers entry points again (tests, notebooks)."""
    global _state
    _state = _State()


def plugin_manager() -> pluggy.PluginManager:
    _load()
    return _state.pm


def register_plugin(plugin, name: str) -> None:
    """Register an in-process plugin (a module or object with hook implementations).

    Registering a plugin that is already registered (e.g. a module also loaded through its
    installed entry point, under whatever name) does nothing; another plugin under a taken
    name is a :class:`DuplicateNameError`."""
    _load()
    if _state.pm.is_registered(plugin):
        return
    if _state.pm.has_plugin(name):
        dist = _state.info[name].distribution.strip("()") if name in _state.info else "?"
        raise DuplicateNameError(
            f"plugin name {name!r} is taken by another plugin ({dist}); register this one under "
            f"another name, or unregister_plugin({name!r}) first"
        )
    _check_api(plugin, name)
    _state.pm.register(plugin, name=name)
    _state.info[name] = PluginInfo(name, "(in-process)", "")
    _state.registries = None


def unregister_plugin(name: str) -> None:
    _load()
    _state.pm.unregister(name=name)
    _state.info.pop(name, None)
    _state.failures = [f for f in _state.failures if f.name != name]
    _state.registries = None


def _build_registries() -> dict[str, Registry]:
    pm = plugin_manager()
    registries = {kind: Registry(kind) for kind in KINDS}
    for info in _state.info.values():
        info.hooks = []
    for kind in KINDS:
        caller = getattr(pm.hook, f"register_{kind}")
        # Call implementations one by one (in registration order) so a failure or a clash is
        # attributed to its plugin, and the other plugins still register.
        for impl in caller.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin)
            info = _state.info.get(plugin_name)
            source = f"{plugin_name} ({info.distribution})" if info else plugin_name
            if info is not None:
                info.hooks.append(f"register_{kind}")

            def register(name, obj, _source=source, _kind=kind):
                registries[_kind].add(name, obj, _source)

            try:
                impl.function(register)
            except Exception as exc:
                dist = info.distribution if info else "?"
                _state.failures.append(
                    PluginFailure(plugin_name, dist, f"{type(exc).__name__}: {exc}")
                )
    return registries


def registry(kind: str) -> Registry:
    """The registry of one kind: methods, networks, datasets, samplers or metrics."""
    if kind not in KINDS:
        raise UnknownNameError(f"unknown registry {kind!r}; valid: {', '.join(KINDS)}")
    if _state.registries is None:
        _state.registries = _build_registries()
    return _state.registries[kind]


def plugins() -> list[PluginInfo]:
    """Loaded plugins with their distribution, version and the hooks they implement."""
    for kind in KINDS:
        registry(kind)
    return [_state.info[n] for n in _state.info]


def disabled() -> list[PluginInfo]:
    """Installed plugins skipped because ``ZOO_DISABLE_PLUGINS`` names them."""
    _load()
    return list(_state.disabled)


def failures() -> list[PluginFailure]:
    """Plugins that failed to load or register, with the reason."""
    for kind in KINDS:
        registry(kind)
    seen, out = set(), []
    for f in _state.failures:
        key = (f.name, f.error)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def get(kind: str, name: str):
    """Look up ``name`` in the ``kind`` registry; unknown names list the valid ones."""
    return registry(kind).get(name)
