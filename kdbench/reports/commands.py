"""`kdbench report` and `kdbench import`: leaderboards from the store, profile rows into the store."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError
from kdbench.reports.store import PROFILE_COLUMNS, STORE_NAME

# Field types of an imported profile row (see ResultsStore's profiles table).
_TEXT = ("arch", "backend", "device")
_OPTIONAL_TEXT = ("note", "source")
_INTS = ("batch", "crop", "params", "runs")
_FLOATS = ("size_mb", "file_mb", "gflops", "latency_median_ms", "latency_p90_ms", "created")
_MAX_INT = 2**63 - 1
_IGNORED = ("id",)  # present when rows were dumped from a store; the importing store numbers its own


def cmd_report(args: argparse.Namespace) -> int:
    """Print or write the leaderboard; with --plots also write the figures."""
    from kdbench.fileio import ensure_dir, translated_writes
    from kdbench.reports import leaderboard

    if args.plots:  # a file or a looping link there is one line before any work
        ensure_dir(args.plots, "--plots")
    df = leaderboard.load_results(args.runs_dir, args.scenes, args.preset)
    from kdbench.reports.equivalence import parse_rope

    df.attrs["rope"] = parse_rope(getattr(args, "rope", "2%"))  # read by kdbench.reports.claims
    if getattr(args, "seeds_needed", None):
        return _print_seeds_needed(df, args.seeds_needed)
    profiles = leaderboard.load_profiles(args.runs_dir)
    if args.format == "html":  # a folder: index.html with the plots inside (--out default site/)
        from kdbench.reports.html import write_site

        print(f"wrote {write_site(df, profiles, args.out or 'site', runs_dir=args.runs_dir)}", file=sys.stderr)
    elif args.format == "terminal" and not args.out:
        _print_terminal(df, profiles)
    else:
        text = leaderboard.render(df, profiles, args.format, table=getattr(args, "table", "accuracy"))
        if args.out:
            from kdbench.fileio import write_text_atomic

            write_text_atomic(args.out, text)
            print(f"wrote the {args.format} leaderboard to {args.out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
    if args.plots:
        from kdbench.reports.plots import write_plots

        with translated_writes(args.plots, "--plots"):
            paths = write_plots(df, profiles, args.plots, runs_dir=args.runs_dir)
        for path in paths:
            print(f"wrote {path}", file=sys.stderr)
        if not paths:
            print(f"no plots written to {args.plots}: no finished runs to plot", file=sys.stderr)
    return 0


def _print_seeds_needed(df, text: str) -> int:
    """`kdbench report --seeds-needed 5%`: seeds per scene for 80% power, per row and metric."""
    from tabulate import tabulate

    from kdbench.reports.claims import seeds_needed_display
    from kdbench.reports.equivalence import parse_rope

    change = parse_rope(text, "--seeds-needed")
    table = seeds_needed_display(df, change)
    if table.empty:
        print("no KD row has matched (scene, seed) pairs with the baseline in this store: nothing to size")
        return 0
    print(f"Seeds per scene (at the scenes present) a change of {100 * change:g}% needs for 80% power in the "
          "two-sided paired t-test on log error ratios at 0.05 (exact, noncentral t), at each row's observed SD "
          "of the log ratio over its (scene, seed) pairs; power now: what the pairs present have for it.")
    print(tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True))
    return 0


def _print_terminal(df, profiles) -> None:
    from rich.console import Console

    from kdbench.reports import leaderboard

    console = Console()
    if not console.is_terminal:  # piped: rich would squeeze the tables into 80 columns
        console = Console(width=200)
    leaderboard.print_terminal(df, profiles, console)


# import ---------------------------------------------------------------------------------------------------
def read_profile_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Validated profile rows from a JSON file written by `kdbench profile --out` (or a bare list)."""
    from kdbench.profile_onnx import JSON_FORMAT

    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"{path} does not exist: pass the JSON file `kdbench profile --out FILE` wrote")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise KdbenchError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") \
            from None
    except UnicodeDecodeError as exc:
        raise KdbenchError(f"{path} is not UTF-8 text ({exc.reason}): is it the JSON file?") from None
    if isinstance(doc, dict):
        if doc.get("format") != JSON_FORMAT or not isinstance(doc.get("rows"), list):
            raise KdbenchError(f"{path} is not a kdbench profile file: expected "
                               f"{{\"format\": \"{JSON_FORMAT}\", \"rows\": [...]}} as written by "
                               f"`kdbench profile --out`")
        doc = doc["rows"]
    if not isinstance(doc, list):
        raise KdbenchError(f"{path}: expected a list of profile rows, found {type(doc).__name__}")
    return [validate_profile_row(row, i, path) for i, row in enumerate(doc)]


def validate_profile_row(row: Any, index: int, path: str | os.PathLike) -> dict[str, Any]:
    """Check one row's fields and types; the error names the file, the row number and the field."""
    where = f"{path}, row {index}"
    if not isinstance(row, dict):
        raise KdbenchError(f"{where}: expected an object with fields {', '.join(PROFILE_COLUMNS)}, "
                           f"found {type(row).__name__}")
    unknown = sorted(set(row) - set(PROFILE_COLUMNS) - set(_IGNORED))
    if unknown:
        raise KdbenchError(f"{where}: unknown field(s) {', '.join(unknown)}; known: "
                           f"{', '.join(PROFILE_COLUMNS)}")
    out = {k: row.get(k) for k in PROFILE_COLUMNS}
    for key in _TEXT:
        if not isinstance(out[key], str) or not out[key].strip():
            raise KdbenchError(f"{where}: field {key!r} must be a non-empty string, found {out[key]!r}")
    for key in _OPTIONAL_TEXT:
        if out[key] is not None and not isinstance(out[key], str):
            raise KdbenchError(f"{where}: field {key!r} must be a string or null, found {out[key]!r}")
    for key in _INTS:
        value = out[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise KdbenchError(f"{where}: field {key!r} must be a whole number >= 0 or null, found {value!r}")
        if value is not None and value > _MAX_INT:  # SQLite integers are 64-bit
            raise KdbenchError(f"{where}: field {key!r} = {value} is too large (at most {_MAX_INT:.3g}): is it "
                               "the right value?")
    for key in _FLOATS:
        _check_float(out[key], key, where)
    out["estimated"] = _check_estimated(out, where)
    return out


def _check_float(value: Any, key: str, where: str) -> None:
    ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                           and math.isfinite(value) and value >= 0)
    if not ok:
        raise KdbenchError(f"{where}: field {key!r} must be a finite number >= 0 or null, found {value!r}")


def _check_estimated(row: dict[str, Any], where: str) -> int:
    value = row["estimated"]
    if value not in (None, 0, 1, True, False):
        raise KdbenchError(f"{where}: field 'estimated' must be 0/1 or true/false, found {value!r}")
    if value and not row["note"]:
        raise KdbenchError(f"{where}: an estimated row needs a 'note' saying how it was estimated")
    return int(bool(value))


def _row_key(row: dict[str, Any]) -> tuple:
    created = row.get("created")
    return (row["arch"], row["backend"], row["device"], row.get("batch"), row.get("crop"),
            None if created is None else round(float(created), 3))


def _measurement_key(row: dict[str, Any]) -> tuple:
    """Everything a measurement says, without when and from where it was imported."""
    return tuple(row.get(k) for k in PROFILE_COLUMNS if k not in ("source", "created"))


def import_profiles(path: str | os.PathLike, runs_dir: str | os.PathLike) -> tuple[int, int]:
    """Merge a profile JSON file into the store of `runs_dir`; returns (added, already present)."""
    from kdbench.reports.store import ResultsStore

    rows = read_profile_rows(path)
    for row in rows:
        row["source"] = row["source"] or f"import {Path(path).name}"
    with ResultsStore(runs_dir) as store:
        # The same file imported twice must not count its measurements twice. A row without `created`
        # gets the import time in the store, so it is recognised by what it measured instead.
        present = store.profiles()
        seen = {_row_key(r) for r in present}
        measured = {_measurement_key(r) for r in present}
        new = []
        for r in rows:
            key = _row_key(r) if r["created"] is not None else _measurement_key(r)
            if key not in (seen if r["created"] is not None else measured):
                new.append(r)
                seen.add(_row_key(r))
                measured.add(_measurement_key(r))
        store.add_profiles(new)
    return len(new), len(rows) - len(new)


def cmd_import(args: argparse.Namespace) -> int:
    """`kdbench import FILE`: add the profile rows of FILE to the results store."""
    added, present = import_profiles(args.file, args.runs_dir)
    extra = f" ({present} already there, skipped)" if present else ""
    store = Path(args.runs_dir) / STORE_NAME
    print(f"imported {added} profile rows from {args.file} into {store}{extra}")
    return 0
