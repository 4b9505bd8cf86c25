"""Method variants: one method with other hyperparameters as its own leaderboard row, and method groups.

Syntax (what `kdbench run --methods` takes), items separated by commas:

    NAME                      a registered method with its defaults (after --set NAME.KEY=VALUE)
    NAME:KEY=VALUE[:KEY=VALUE...]   a variant, e.g. sckd:alpha=0; list values join items with +
                              (sckd:sc_layers=layer2+layer3), because a comma separates methods
    NAME[KEY=VALUE,...]       the same variant in brackets (quote it: shells glob [...])
    all                       every registered method with its defaults
    core                      the comparison kdbench is built around: baseline, vanilla, attentive,
                              similarity, sckd (the default of `kdbench run`)
    ablations                 sckd, sckd:sigma=0 (hint only), sckd:alpha=0 (SC only)

A variant's label is canonical: the keys in the method's declaration order, values as parsed, keys equal
to the base value left out, so `sckd:sigma=100` is `sckd` and `sckd[alpha=0.0]` is `sckd:alpha=0`.
The label names the row; the job itself records the method name and its resolved hyperparameters, so a
variant whose parameters equal another's is the same job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.methods.registry import available_methods, get_method, resolved_params
from kdbench.models import ALL_TAPS

# The order `all` lists built-ins in (the rest, plugins included, follow sorted by name).
BUILTIN_ORDER = ("baseline", "vanilla", "attentive", "similarity", "hint", "sckd")
GROUPS: dict[str, tuple[str, ...]] = {
    "core": ("baseline", "vanilla", "attentive", "similarity", "sckd"),  # the mission's comparison
    "ablations": ("sckd", "sckd:sigma=0", "sckd:alpha=0"),  # SCKD, hint only, SC only
}
SYNTAX = ("NAME, NAME:KEY=VALUE[:KEY=VALUE...] (list values joined with +), 'NAME[KEY=VALUE,...]', "
          "or a group: all, " + ", ".join(GROUPS))


@dataclass(frozen=True)
class Variant:
    """A method with resolved hyperparameters and the label its leaderboard row carries."""

    label: str
    name: str
    params: dict[str, Any]


def all_methods() -> list[str]:
    """Every registered method: built-ins in their order, then the others sorted."""
    registered = available_methods()
    rest = sorted(n for n in registered if n not in BUILTIN_ORDER)
    return [n for n in BUILTIN_ORDER if n in registered] + rest


def split_items(text: str) -> list[str]:
    """Split at commas outside brackets (`sckd[alpha=0,sigma=0],hint` is two items)."""
    items, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    return [i.strip() for i in items if i.strip()]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`sckd:alpha=0:sigma=5` or `sckd[alpha=0,sigma=5]` to ("sckd", {"alpha": "0", "sigma": "5"})."""
    text = text.strip()
    if "[" in text:
        if not text.endswith("]") or text.count("[") != 1 or text.count("]") != 1:
            raise KdbenchError(f"--methods item {text!r}: expected NAME[KEY=VALUE,...]; syntax: {SYNTAX}")
        name, inner = text[:-1].split("[", 1)
        pairs = [p for part in inner.split(",") for p in part.split(":")]
    else:
        name, *pairs = text.split(":")
    name = name.strip()
    out: dict[str, str] = {}
    for pair in (p.strip() for p in pairs):
        if not pair:
            continue
        if "=" not in pair:
            raise KdbenchError(f"--methods item {text!r}: {pair!r} is not KEY=VALUE (join list values with +, "
                               f"e.g. sckd:sc_layers=layer2+layer3); syntax: {SYNTAX}")
        key, value = (s.strip() for s in pair.split("=", 1))
        if key in out:
            raise KdbenchError(f"--methods item {text!r}: {key} is given twice")
        out[key] = value
    if not name:
        raise KdbenchError(f"--methods item {text!r}: no method name; syntax: {SYNTAX}")
    try:
        get_method(name)  # unknown names list the registered ones
    except KdbenchError as exc:
        if name in ALL_TAPS or name.isdigit():  # `sckd:sc_layers=layer2,layer3` split at the comma
            raise KdbenchError(f"{exc}; {name!r} looks like a layer: join list values with +, "
                               f"e.g. sckd:sc_layers=layer2+layer3") from None
        raise
    return name, out


def format_param(value: Any) -> str:
    """A parsed value as label text: floats without a needless .0, lists joined with +, bools lower-case."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and math.isfinite(value) and abs(value) < 1e15 else repr(value)
    if isinstance(value, (list, tuple)):
        return "+".join(map(str, value)) or '""'
    return str(value)


def resolve(text: str, base: dict[str, str] | None = None) -> Variant:
    """One item: hyperparameters = defaults, then `base` (--set), then the variant's own keys."""
    name, own = parse_variant(text)
    base = base or {}
    start = resolved_params(name, base)  # an error here is the --set value's
    try:
        params = resolved_params(name, {**base, **own})
    except KdbenchError as exc:
        raise KdbenchError(f"--methods item {text!r}: {exc}") from None
    changed = [f"{k}={format_param(v)}" for k, v in params.items() if v != start[k]]
    return Variant(":".join([name, *changed]), name, params)


def expand_methods(arg: str | list[str]) -> list[str]:
    """Groups expanded, each item canonical (against the defaults), duplicates removed, order kept.

    An empty selection is an error (it used to mean `all`: `--methods ''` silently ran every method).
    """
    items = split_items(arg) if isinstance(arg, str) else [i for a in arg for i in split_items(a)]
    if not items:
        raise KdbenchError(f"--methods {arg!r} names no method: give at least one, e.g. --methods baseline,sckd, "
                           "or a group (all, core, ablations)")
    out: list[str] = []
    for item in items:
        if item == "all":
            out += all_methods()
        elif item in GROUPS:
            out += list(GROUPS[item])
        else:
            out.append(resolve(item).label)
    return list(dict.fromkeys(out))


def resolve_methods(items: list[str], sets: dict[str, dict[str, str]] | None = None) -> list[Variant]:
    """Each item resolved with its method's --set values as the base; equal labels (equal jobs) once."""
    sets = sets or {}
    names = {parse_variant(i)[0] for i in items}
    unknown = sorted(set(sets) - names)
    if unknown:
        raise KdbenchError(f"--set names method(s) {', '.join(unknown)} that this run does not include "
                           f"(methods: {', '.join(sorted(names))})")
    variants: dict[str, Variant] = {}
    for item in items:
        name = parse_variant(item)[0]
        v = resolve(item, sets.get(name))
        variants.setdefault(v.label, v)
    return list(variants.values())
