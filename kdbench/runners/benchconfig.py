"""Benchmark definition files: `kdbench run --config bench.toml`, and the resolved options of every run.

The keys a file may set are read from the `run` argument parser itself (option dest names, with `-` or `_`,
e.g. `teacher-arch` or `teacher_arch`; `set` for --set), so an option added to the parser is expressible in
a file without touching this module. Flags on the command line override the file. Paths are read as they
would be on the command line (relative to the current folder).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pyproject installs tomli there)
    import tomli as tomllib

NOT_IN_FILE = ("help", "config")  # a file does not name another file
RESOLVED_DIR = "run-configs"  # under the runs folder: one TOML per `kdbench run`


def file_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a benchmark file may set (dest names and long option names, `_` form) -> its action."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_IN_FILE:
            continue
        keys[action.dest] = action
        for opt in action.option_strings:
            if opt.startswith("--"):
                keys.setdefault(opt[2:].replace("-", "_"), action)
    return keys


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"config file {path} does not exist: pass --config path/to/bench.toml")
    try:
        data = path.read_bytes()
        # A UTF-8 byte-order mark (BOM, which some editors write) is not TOML: read past it
        return tomllib.loads(data.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise KdbenchError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise KdbenchError(f"{path} is not UTF-8 text ({exc.reason})") from None


def _scalar(action: argparse.Action, value: Any, where: str) -> Any:
    """One value converted the way argparse converts the same text, or an error naming the key."""
    if isinstance(value, (dict, list)) or isinstance(value, bool):
        raise KdbenchError(f"{where}: expected a single value, found {value!r}")
    kind = action.type
    if kind is int and not isinstance(value, int):
        raise KdbenchError(f"{where}: expected a whole number, found {value!r}")
    if kind is float and not isinstance(value, (int, float)):
        raise KdbenchError(f"{where}: expected a number, found {value!r}")
    if callable(kind) and kind not in (int, float):
        try:
            value = kind(str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            raise KdbenchError(f"{where}: {exc}") from None
    elif kind is None:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise KdbenchError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _convert(action: argparse.Action, key: str, value: Any, where: str) -> Any:
    if action.nargs == 0:  # a flag (--quiet, --dry-run)
        if not isinstance(value, bool):
            raise KdbenchError(f"{where}: expected true or false, found {value!r}")
        return value if action.const is True else not value if action.const is False else value
    if isinstance(action, argparse._AppendAction):  # repeatable: a list, or a table for --set
        if action.dest == "sets" and isinstance(value, dict):  # [set.sckd] sigma = 50
            if not all(isinstance(t, dict) for t in value.values()):
                raise KdbenchError(f"{where}: write one table per method, e.g. [set.sckd] then sigma = 50")
            value = [f"{m}.{k}={_set_value(v)}" for m, table in value.items() for k, v in table.items()]
        items = value if isinstance(value, list) else [value]
        return [_scalar(action, _set_value(v) if action.dest == "sets" else v, where) for v in items]
    if isinstance(value, list) and action.type is None:  # methods = ["baseline", "sckd"], seeds = [0, 1]
        if not value:  # `methods = []` once meant every method
            raise KdbenchError(f"{where}: an empty list; give at least one value, or leave the key out for "
                               "the default")
        return _scalar(action, ",".join(str(v) for v in value), where)
    return _scalar(action, value, where)


def _set_value(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def file_defaults(parser: argparse.ArgumentParser, path: str | os.PathLike) -> dict[str, Any]:
    """The options a benchmark file sets, as {dest: value}, validated against the parser's actions."""
    keys = file_options(parser)
    out: dict[str, Any] = {}
    for key, value in read_toml(path).items():
        action = keys.get(key.replace("-", "_"))
        if action is None:
            hint = " (a file cannot name another config file)" if key == "config" else ""
            raise KdbenchError(f"{path}: unknown key {key!r}{hint}; known keys: "
                               f"{', '.join(sorted(a.dest for a in set(keys.values())))}")
        out[action.dest] = _convert(action, key, value, f"{path}: {key}")
    return out


def apply_config_file(parser: argparse.ArgumentParser, argv: list[str], path: str | os.PathLike
                      ) -> argparse.Namespace:
    """Parse `argv` with the file's values as defaults: flags given on the command line win."""
    defaults = file_defaults(parser, path)
    saved = {a.dest: a.default for a in parser._actions}
    parser.set_defaults(**defaults)
    try:
        args = parser.parse_args(argv)
    finally:
        parser.set_defaults(**saved)
    # Which options the file set (and the command line did not): an error about one names the file's key.
    given = parser.parse_args(argv)
    args.config_keys = {a.option_strings[-1]: a.option_strings[-1].lstrip("-").replace("-", "_")
                        for a in parser._actions if a.dest in defaults and a.option_strings
                        and getattr(given, a.dest) == saved[a.dest]}
    return args


def blame_config(message: str, args: argparse.Namespace) -> str:
    """`message` with the config file and key added when it is about an option the file set."""
    for option, key in getattr(args, "config_keys", {}).items():
        if re.search(rf"{re.escape(option)}(?![\w-])", message):
            return f"{message} (set by {args.config}: {key})"
    return message


def toml_value(value: Any) -> str:
    """A value as TOML: booleans, numbers (inf and nan as TOML spells them), arrays, inline tables, strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))  # a TOML basic string uses JSON's escapes


def resolved_toml(parser: argparse.ArgumentParser, args: argparse.Namespace, note: str = "") -> str:
    """Every run option with the value this run used, as a file `kdbench run --config` reads back."""
    from kdbench import __version__

    lines = [f"# kdbench {__version__}: the options of `kdbench run` at "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}{note}",
             "# rerun with: kdbench run --config THIS_FILE  (unset keys take the preset's values)"]
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_IN_FILE or action.dest == "dry_run":
            continue
        key = action.option_strings[-1].lstrip("-").replace("-", "_")
        value = getattr(args, action.dest, None)
        if value is None:
            lines.append(f"# {key} = (not set)")
        elif key == "set":
            lines.append(f"set = {toml_value(list(value))}")
        else:
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_resolved_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                          runs_dir: str | os.PathLike) -> Path:
    """Write the run's resolved options under `<runs_dir>/run-configs/` (atomically) and return the path."""
    from kdbench.fileio import write_text_atomic

    note = f" (from {args.config})" if getattr(args, "config", None) else ""
    folder = Path(runs_dir) / RESOLVED_DIR
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = folder / f"run-{stamp}.toml"
    n = 1
    while path.exists():  # two runs in the same second keep both files
        n += 1
        path = folder / f"run-{stamp}-{n}.toml"
    write_text_atomic(path, resolved_toml(parser, args, note))
    return path
