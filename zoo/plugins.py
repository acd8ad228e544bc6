"""Plugin manager: entry-point discovery, blocking, failure isolation and the registries.

Plugins are found through the ``zoo`` entry-point group, first-party ones included. A plugin
whose import or hook raises, that registers a malformed object, a first-party name or a name
another plugin also registers, that implements a hook zoo does not have, or that was built
against another plugin API version is reported (:func:`failures`), registers nothing, and the
others keep working.
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

    for modname in CHECK_MODULES:
        importlib.import_module(modname)
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


#: Checks of registered objects by kind, ``check(name, obj)`` raising on what the kind cannot
#: use; added by the modules that define the kinds (zoo.methods, zoo.diffusion.samplers,
#: zoo.metrics), so this module imports none of them.
OBJECT_CHECKS: dict = {}
#: Modules whose import adds an object check without registering anything.
CHECK_MODULES = ("zoo.methods",)


def add_object_check(kind: str, check) -> None:
    """Check every object registered as ``kind`` with ``check(name, obj)`` (see docs/plugin-api.md
    for what each kind needs)."""
    if kind not in KINDS:
        raise UnknownNameError(f"unknown registry {kind!r}; valid: {', '.join(KINDS)}")
    OBJECT_CHECKS[kind] = check


def _check_object(kind: str, name, obj) -> None:
    """Refuse a registration whose object lacks what its kind needs (docs/plugin-api.md)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {kind[:-1]} name must be a non-empty string, got {name!r}")
    check = OBJECT_CHECKS.get(kind)
    if check is not None:
        check(name, obj)
    elif not callable(obj):
        raise TypeError(f"{kind[:-1]} {name!r} must be callable, got {type(obj).__name__}")


def first_party(plugin_name: str) -> bool:
    """Whether a loaded plugin is zoo's own (a core module or an entry point of zoo's
    distribution): its names cannot be taken by another plugin."""
    import zoo

    info = _state.info.get(plugin_name)
    return plugin_name in CORE_MODULES or (info is not None
                                           and info.distribution == zoo.DISTRIBUTION)


def _unknown_hooks(pm: pluggy.PluginManager) -> list[tuple[str, str]]:
    """(plugin, hook) for each hook implementation that matches no hook specification (a
    misspelled ``register_sampler``, say), which pluggy would otherwise ignore."""
    unknown = []
    for hook_name in dir(pm.hook):
        if hook_name.startswith("_"):
            continue
        caller = getattr(pm.hook, hook_name)
        if getattr(caller, "spec", True) is None:
            unknown.extend((pm.get_name(impl.plugin), hook_name)
                           for impl in caller.get_hookimpls())
    return unknown


def _build_registries() -> dict[str, Registry]:
    """Every plugin's registrations, all of a plugin's or none: each plugin's hooks run into a
    staging list, whose objects are checked (:func:`_check_object`); zoo's own plugins go in
    first, so their names cannot be taken; a name that two other plugins register refuses both
    (``ZOO_DISABLE_PLUGINS`` one of them to choose). A refused plugin is a :func:`failures`
    entry and registers nothing."""
    pm = plugin_manager()
    staged: dict[str, list[tuple[str, str, object]]] = {}
    problems: dict[str, str] = {}
    for info in _state.info.values():
        info.hooks = []
    for plugin_name, hook in _unknown_hooks(pm):
        problems.setdefault(plugin_name, f"hook {hook!r} is not a zoo hook (a misspelling?); "
                                         f"valid: {', '.join('register_' + k for k in KINDS)}")
    for kind in KINDS:
        caller = getattr(pm.hook, f"register_{kind}")
        for impl in caller.get_hookimpls():
            plugin_name = pm.get_name(impl.plugin)
            entries = staged.setdefault(plugin_name, [])
            if plugin_name in _state.info:
                _state.info[plugin_name].hooks.append(f"register_{kind}")
            try:
                impl.function(lambda name, obj, _kind=kind, _to=entries:
                              _to.append((_kind, name, obj)))
                for entry_kind, name, obj in entries:
                    if entry_kind == kind:
                        _check_object(kind, name, obj)
            except Exception as exc:
                problems.setdefault(plugin_name, f"register_{kind}: {type(exc).__name__}: {exc}")
    for plugin_name, entries in staged.items():
        seen = set()
        for kind, name, _ in entries:
            if (kind, name) in seen:
                problems.setdefault(plugin_name, f"registers {kind[:-1]} {name!r} twice")
            seen.add((kind, name))
    registries = {kind: Registry(kind) for kind in KINDS}
    ours = [n for n in staged if first_party(n)]
    theirs = [n for n in staged if not first_party(n)]
    for plugin_name in ours:
        if plugin_name not in problems:
            _add_all(registries, plugin_name, staged[plugin_name])
    claims: dict[tuple[str, str], list[str]] = {}
    for plugin_name in theirs:
        if plugin_name in problems:
            continue
        for kind, name, _ in staged[plugin_name]:
            if name in registries[kind]:
                problems.setdefault(plugin_name, (
                    f"{kind[:-1]} {name!r} is zoo's own ({registries[kind].source(name)}): "
                    f"a plugin cannot take a first-party name; register it under another name"))
            claims.setdefault((kind, name), []).append(plugin_name)
    for (kind, name), owners in claims.items():
        owners = [o for o in owners if o not in problems]
        if len(owners) > 1:
            for owner in owners:
                others = ", ".join(o for o in owners if o != owner)
                problems[owner] = (f"{kind[:-1]} {name!r} is also registered by {others}: both "
                                   f"are refused; choose one with {DISABLE_ENV}="
                                   f"{others.split(', ')[0]}")
    for plugin_name in theirs:
        if plugin_name not in problems:
            _add_all(registries, plugin_name, staged[plugin_name])
    for plugin_name, problem in problems.items():
        info = _state.info.get(plugin_name)
        _state.failures.append(PluginFailure(plugin_name, info.distribution if info else "?",
                                             f"not registered: {problem}"))
    return registries


def _add_all(registries, plugin_name: str, entries) -> None:
    info = _state.info.get(plugin_name)
    source = f"{plugin_name} ({info.distribution})" if info else plugin_name
    for kind, name, obj in entries:
        registries[kind].add(name, obj, source)


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
