"""`kdbench methods`: every registered method with its description and hyperparameters."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from kdbench.methods.base import HParam, Method
from kdbench.methods.registry import PLUGIN_MODULE_PREFIX, available_methods, load_plugin
from kdbench.methods.variants import GROUPS

WIDTH = 100
HELP_COLUMN = 39  # 4 + name 14 + type 7 + default 11 + separators


def format_value(value: object) -> str:
    """A default as a user would type it after --set (layers comma-separated)."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or '""'
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def format_hparam(key: str, hp: HParam) -> list[str]:
    """One hyperparameter: name, type, default, then its help wrapped under it."""
    help_text = hp.help + (f" [{' | '.join(hp.choices)}]" if hp.choices else "")
    if hp.search:
        low, high, scale = hp.search
        help_text += f" (tune: {low:g}..{high:g} {scale})"
    default = format_value(hp.default)
    head = f"    {key:<14} {hp.type:<7} {default:<11} "
    indent = " " * HELP_COLUMN
    body = textwrap.wrap(help_text, WIDTH - HELP_COLUMN, break_on_hyphens=False) or [""]
    if len(head) > HELP_COLUMN:  # a long default (a layer list) gets its own line; the help goes under it
        return [head.rstrip()] + [indent + line for line in body]
    return [head + body[0]] + [indent + line for line in body[1:]]


def method_source(cls: type[Method]) -> str:
    """Where a plugin method comes from: its file for --plugin files, its module for installed packages."""
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if cls.__module__.startswith(PLUGIN_MODULE_PREFIX) and path:  # load_plugin's synthetic module name
        try:  # as the user named it: relative to the current folder when it lies under it
            return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(path)
    return cls.__module__


def format_method(name: str, cls: type[Method]) -> list[str]:
    """One method's block of lines."""
    teacher = "teacher" if cls.needs_teacher else "no teacher"
    where = "" if cls.__module__.startswith("kdbench.methods.") else f", from {method_source(cls)}"
    lines = [f"{name}  ({teacher}{where})"]
    lines += textwrap.wrap(cls.description or "(no description)", WIDTH, initial_indent="  ",
                           subsequent_indent="  ")
    if cls.hparams:
        lines += [f"    {'name':<14} {'type':<7} {'default':<11} help"]
        for key, hp in cls.hparams.items():
            lines += format_hparam(key, hp)
    else:
        lines.append("    (no hyperparameters)")
    if not any(hp.search for hp in cls.hparams.values()):
        lines.append("    (no search space: `kdbench tune` searches its learning rate only)")
    return lines


def methods_text() -> str:
    """The whole listing, built-ins first in registration order, then plugins."""
    blocks = ["\n".join(format_method(n, c)) for n, c in available_methods().items()]
    groups = "\n".join(f"  {g:<10} {', '.join(items)}" for g, items in
                       [("all", ("every method above, defaults",)), *GROUPS.items()])
    footer = ("Override with --set METHOD.KEY=VALUE, e.g. --set sckd.sigma=50 --set sckd.sc_layers=3,4\n"
              "Variants are rows of their own: kdbench run --methods baseline,sckd,sckd:sigma=0,sckd:alpha=0\n"
              "  (NAME:KEY=VALUE[:KEY=VALUE...]; list values joined with +, e.g. sckd:sc_layers=layer2+layer3)\n"
              "Groups for --methods:\n" + groups + "\n"
              "kdbench tune searches each method's (tune: ...) ranges and, for every row, the learning rate\n"
              "  (the preset's / 10 .. x 10, log)")
    return "\n\n".join(blocks + [footer])


def cmd_methods(args: argparse.Namespace) -> int:
    """Load --plugin files, then print every registered method and its hyperparameters."""
    for path in getattr(args, "plugin", None) or []:
        load_plugin(path)
    print(methods_text())
    return 0
