"""The plugin manager: third-party plugins from the `aetool` entry point group, then built-ins.

Built-in plugins (`DEFAULT_PLUGINS`) are ordinary plugin modules; `pyproject.toml` also lists
them as `aetool` entry points, and `load_plugins` registers any of them that the entry points
did not (a source tree, or tests, which set `AETOOL_NO_ENTRYPOINTS=1` to keep the user's
installed plugins out). A plugin that fails to import gives a `PluginWarning` naming it; the
others keep working.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import re
import threading
import warnings
from typing import Any

import pluggy

from aetool.errors import SettingError
from aetool.plugins import hookspecs

DEFAULT_PLUGINS = (
    "aetool.plugins.default.gaussian",
    "aetool.plugins.default.uniform",
    "aetool.plugins.default.occlusion",
    "aetool.plugins.default.mnist",
    "aetool.plugins.default.kmnist",
    "aetool.plugins.default.emnist",
    "aetool.plugins.default.course",
    "aetool.plugins.default.wide",
)
ENTRY_POINT_GROUP = "aetool"
NO_ENTRYPOINTS_ENV = "AETOOL_NO_ENTRYPOINTS"

pm = pluggy.PluginManager("aetool")
pm.add_hookspecs(hookspecs)

_loaded = False
_loading = threading.RLock()
# plugin name -> (distribution name, version) for plugins that came from an entry point
_distributions: dict[str, tuple[str, str]] = {}


class PluginWarning(UserWarning):
    """A plugin could not be loaded or registered something it should not have."""


def warn(message: str) -> None:
    warnings.warn(message, PluginWarning, stacklevel=3)


def entry_points_enabled() -> bool:
    return os.environ.get(NO_ENTRYPOINTS_ENV, "").strip().lower() in ("", "0", "false", "no")


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The `aetool` entry points, ordered by distribution then name (so loading is stable)."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)

    def key(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
        dist = getattr(ep, "dist", None)
        return (dist.name if dist is not None else "", ep.name)

    return sorted(found, key=key)


def _load_entry_points() -> None:
    for ep in _entry_points():
        name = ep.value  # the module path (or module:object), as for DEFAULT_PLUGINS
        if pm.get_plugin(name) is not None or pm.is_blocked(name):
            continue
        dist = getattr(ep, "dist", None)
        origin = f"plugin {ep.name!r}" + (f" (package {dist.name})" if dist is not None else "")
        try:
            plugin = ep.load()
        except BaseException as exc:  # noqa: BLE001 - sys.exit or Ctrl-C in its import too:
            # whatever a plugin's import raises makes it a broken plugin, not aetool's end
            warn(f"aetool {origin} could not be imported and is skipped: "
                 f"{type(exc).__name__}" + (f": {exc}" if str(exc) else "") + ".")
            continue
        if pm.is_registered(plugin):
            continue
        try:
            pm.register(plugin, name=name)
        except BaseException as exc:  # noqa: BLE001 - e.g. a hook with a wrong signature
            warn(f"aetool {origin} could not be registered and is skipped: {exc}")
            continue
        if dist is not None:
            _distributions[name] = (dist.name, dist.version)


def load_plugins() -> None:
    """Register the entry point plugins (unless $AETOOL_NO_ENTRYPOINTS=1), then the built-ins.

    Idempotent: later calls do nothing.
    """
    global _loaded
    with _loading:  # threads (search workers in one process) wait for the first to finish
        if _loaded:
            return
        if entry_points_enabled():
            _load_entry_points()
        for path in DEFAULT_PLUGINS:
            module = importlib.import_module(path)
            if not pm.is_registered(module) and pm.get_plugin(path) is None:
                pm.register(module, name=path)
        _loaded = True


def reset_plugins() -> None:
    """Unregister every plugin so that the next `load_plugins` starts afresh (for tests)."""
    global _loaded
    for name, plugin in list(pm.list_name_plugin()):
        if plugin is not None:
            pm.unregister(plugin, name=name)
    _distributions.clear()
    _loaded = False


def distribution_of(plugin_name: str) -> tuple[str, str] | None:
    """(package name, version) of a plugin that came from an entry point, else None."""
    return _distributions.get(plugin_name)


def hook_implementations(hook_name: str) -> list[Any]:
    """A hook's implementations in registration order (`tryfirst` ones first, `trylast` last)."""
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    return sorted(impls, key=lambda impl: 0 if impl.tryfirst else 2 if impl.trylast else 1)


# --------------------------------------------------------------------------- registries

def package_of(plugin_name: str | None) -> str:
    """The package a plugin came from, as qualified names spell it: its distribution's name,
    `aetool` for the built-ins, else the plugin's own name (one registered by hand)."""
    if not plugin_name:
        return "?"
    dist = _distributions.get(plugin_name)
    if dist is not None:
        return dist[0]
    return "aetool" if plugin_name in DEFAULT_PLUGINS else plugin_name


def provided_by(plugin_name: str | None) -> dict[str, Any]:
    """Where a registered thing came from, as runs record it: `package` (the distribution,
    `aetool` for the built-ins) and its `version` (None for a plugin registered by hand)."""
    dist = _distributions.get(plugin_name or "")
    if dist is not None:
        return {"package": dist[0], "version": dist[1], "plugin": plugin_name}
    if plugin_name in DEFAULT_PLUGINS:
        from aetool import __version__

        return {"package": "aetool", "version": __version__, "plugin": plugin_name}
    return {"package": package_of(plugin_name), "version": None, "plugin": plugin_name}


class Registry(dict):
    """What the plugins registered for one kind, by name: a plain dict of the unambiguous names,
    plus `PACKAGE/NAME` for each name that two packages register (`clashes`).

    Every entry can also be looked up by its qualified name `PACKAGE/NAME` (`aetool/course`);
    looking up a name that two packages register raises `error(field, ...)` naming both
    packages and the qualified spellings."""

    def __init__(self, what: str, field: str, error: type[SettingError] = SettingError) -> None:
        super().__init__()
        self.what, self.field, self.error = what, field, error
        self.qualified: dict[str, Any] = {}
        self.clashes: dict[str, list[str]] = {}  # name -> the qualified names that share it

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or name in self.qualified or name in self.clashes

    def __getitem__(self, name: str) -> Any:
        if name in self.clashes:
            spelled = " or ".join(f"'{q}'" for q in self.clashes[name])
            packages = " and ".join(q.split("/")[0] for q in self.clashes[name])
            raise self.error(self.field, f"{self.what.capitalize()} {name!r} is registered by "
                             f"both {packages}; write {spelled}.")
        if not super().__contains__(name) and name in self.qualified:
            return self.qualified[name]
        return super().__getitem__(name)

    def get(self, name: Any, default: Any = None) -> Any:
        return self[name] if name in self else default

    def add(self, item: Any) -> None:
        qualified = f"{package_of(item.plugin)}/{item.name}"
        if qualified in self.qualified:
            warn(f"{self.what.capitalize()} {item.name!r} from aetool plugin {item.plugin} is "
                 f"ignored: its package already registered {qualified!r}.")
            return
        self.qualified[qualified] = item
        if item.name in self.clashes:
            self.clashes[item.name].append(qualified)
            self[qualified] = item
        elif super().__contains__(item.name):
            first = super().pop(item.name)
            self.clashes[item.name] = [f"{package_of(first.plugin)}/{first.name}", qualified]
            self[self.clashes[item.name][0]] = first
            self[qualified] = item
        else:
            self[item.name] = item


NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_registries: dict[str, tuple[tuple, dict[str, Any]]] = {}  # hook -> (plugins asked, found)


def collect(hook_name: str, kind: type, what: str, reserved: tuple[str, ...] = (),
            field: str | None = None, error: type[SettingError] = SettingError) -> Registry:
    """Everything the plugins register through `hook_name(register)`, by name, each a `kind`
    (a frozen dataclass with `name` and `plugin` fields) with `.plugin` set to its plugin.

    Plugins are asked in the order they were registered. A name that two packages register
    is listed and looked up only as `PACKAGE/NAME` (see `Registry`); every name can be spelled
    that way. A plugin whose hook raises, or that registers something else or a bad name, gets a
    warning; the others keep working. The result is cached until the set of plugins changes;
    `field` (default: `what`) is the setting a failed lookup names, raised as `error`."""
    load_plugins()
    with _loading:
        found = _collect(hook_name, kind, what, reserved)
        registry = Registry(what, field or what, error)
        for item in found:
            registry.add(item)
        return registry


def _collect(hook_name: str, kind: type, what: str, reserved: tuple[str, ...]
             ) -> list[Any]:
    key = tuple(pm.list_name_plugin())  # holds the plugins: ids cannot be reused
    cached = _registries.get(hook_name)
    if cached is not None and _same_plugins(cached[0], key):
        return cached[1]
    found: list[Any] = []
    for impl in hook_implementations(hook_name):
        plugin_name = impl.plugin_name

        def register(item: Any, plugin_name: str = plugin_name) -> None:
            _add(found, item, plugin_name, kind, what, reserved)

        try:
            impl.function(**({"register": register} if "register" in impl.argnames else {}))
        except BaseException as exc:  # noqa: BLE001 - one broken plugin (even one calling
            # sys.exit) must not stop the rest
            warn(f"aetool plugin {plugin_name} failed in {hook_name} and is skipped: "
                 f"{type(exc).__name__}: {exc}")
    _registries[hook_name] = (key, found)
    return found


def _same_plugins(old: tuple, new: tuple) -> bool:
    return len(old) == len(new) and all(
        a_name == b_name and a is b for (a_name, a), (b_name, b) in zip(old, new, strict=True)
    )


def _add(found: list[Any], item: Any, plugin_name: str, kind: type, what: str,
         reserved: tuple[str, ...]) -> None:
    if not isinstance(item, kind):
        warn(f"aetool plugin {plugin_name} registered {item!r}, which is not an "
             f"{kind.__module__}.{kind.__name__}; it is ignored.")
        return
    if not NAME_PATTERN.match(item.name) or item.name in reserved:
        warn(f"aetool plugin {plugin_name} registered a {what} named {item.name!r}, which is "
             "reserved or not a valid name (letters, digits, _ . -); it is ignored.")
        return
    found.append(dataclasses.replace(item, plugin=plugin_name))
