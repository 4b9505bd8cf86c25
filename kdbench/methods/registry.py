"""Method registry: @register_method, entry-point plugins (group `kdbench.methods`), plugin files."""

from __future__ import annotations

import difflib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from kdbench.config import LEGACY_METHOD_DEFAULTS
from kdbench.errors import KdbenchError
from kdbench.methods.base import Method

ENTRY_POINT_GROUP = "kdbench.methods"
PLUGIN_MODULE_PREFIX = "kdbench_plugin_"  # module names of files loaded with --plugin
_REGISTRY: dict[str, type[Method]] = {}
_entry_points_loaded = False


def register_method(name: str):
    """Class decorator: register a Method subclass under `name`."""

    def deco(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise KdbenchError(f"@register_method({name!r}) must decorate a subclass of kdbench.methods.Method")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise KdbenchError(f"method name {name!r} is already registered by {_REGISTRY[name].__module__}")
        cls.name = name
        _check_defaults(name, cls)
        _REGISTRY[name] = cls
        later = {k: (list(h.default) if isinstance(h.default, tuple) else h.default)
                 for k, h in getattr(cls, "hparams", {}).items() if getattr(h, "added_later", False)}
        if later:
            LEGACY_METHOD_DEFAULTS[name] = later
        return cls

    return deco


def _check_defaults(name: str, cls: type[Method]) -> None:
    """Each declared default parses as its own type (`HParam("ten", "float")` fails at registration, by name)."""
    for key, hp in getattr(cls, "hparams", {}).items():
        try:
            hp.parse(hp.default, f"{name}.{key}")
        except KdbenchError as exc:
            module = sys.modules.get(cls.__module__)
            where = getattr(module, "__file__", None) or cls.__module__
            raise KdbenchError(f"method {name!r} ({where}) declares hyperparameter {key!r} with default "
                               f"{hp.default!r}, which is not a valid {hp.type} ({exc}): fix the HParam "
                               "declaration") from None


def load_entry_points() -> None:
    """Import every installed package's `kdbench.methods` entry points (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:
            raise KdbenchError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if isinstance(obj, type) and issubclass(obj, Method) and obj not in _REGISTRY.values():
            register_method(ep.name)(obj)


def reload_entry_points() -> None:
    """Forget that entry points were loaded (after sys.path changed) and load them again."""
    global _entry_points_loaded
    _entry_points_loaded = False
    load_entry_points()


def load_plugin(path: str | Path) -> None:
    """Import a Python file whose @register_method classes join the registry."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise KdbenchError(f"plugin file {path} does not exist: pass --plugin path/to/file.py")
    mod_name = f"{PLUGIN_MODULE_PREFIX}{path.stem}_{abs(hash(str(path))) % 10**8}"
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except KdbenchError as exc:
        del sys.modules[mod_name]
        raise KdbenchError(str(exc) if str(path) in str(exc) else f"plugin file {path}: {exc}") from None
    except SystemExit as exc:  # not an Exception: it would end kdbench without a word
        del sys.modules[mod_name]
        raise KdbenchError(f"plugin file {path} called sys.exit({exc.code!r}) while being imported: a plugin file "
                           "must only define and register methods (put a script's code under "
                           "`if __name__ == \"__main__\":`)") from None
    except Exception as exc:
        del sys.modules[mod_name]
        raise KdbenchError(f"plugin file {path} failed to import: {type(exc).__name__}: {exc}") from exc


def available_methods() -> dict[str, type[Method]]:
    """Every registered method, built-in and plugin, by name."""
    load_entry_points()
    return dict(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The class registered under `name`; unknown names list the valid ones."""
    methods = available_methods()
    if name not in methods:
        close = difflib.get_close_matches(name, list(methods), n=2)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KdbenchError(f"unknown method {name!r}.{hint} Registered: {', '.join(sorted(methods))} "
                           "(load others with --plugin FILE)")
    return methods[name]


def create_method(name: str, params: dict[str, Any] | None = None) -> Method:
    """An instance of method `name` with hyperparameter overrides (strings are parsed to their types)."""
    return get_method(name)(**(params or {}))


def resolved_params(name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """All hyperparameters of a method after defaults and overrides (what a run records and hashes)."""
    m = create_method(name, params)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in m.params.items()}


def parse_set_args(items: list[str] | None) -> dict[str, dict[str, str]]:
    """`--set method.key=value` strings to {method: {key: value}}; malformed items name the fix."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise KdbenchError(f"--set {item!r}: expected METHOD.KEY=VALUE, e.g. --set sckd.sigma=50")
        lhs, value = item.split("=", 1)
        method, key = lhs.split(".", 1)
        out.setdefault(method.strip(), {})[key.strip()] = value.strip()
    return out
