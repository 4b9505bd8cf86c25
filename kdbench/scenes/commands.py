"""`kdbench scenes ...` commands: thin wrappers over the scenes library."""

from __future__ import annotations

import argparse

from kdbench.config import get_preset
from kdbench.errors import KdbenchError
from kdbench.scenes.catalog import data_root, get_scene, is_on_disk, resolve_scenes, scene_dir, scene_lock


def cmd_list(args: argparse.Namespace) -> int:
    """Print the catalog with on-disk and prepared status."""
    from rich.console import Console
    from rich.table import Table

    from kdbench.scenes.status import DOWNLOADS_RECORD, UNKNOWN_DOWNLOAD, UNKNOWN_NOTE, scene_status

    rows = scene_status(args.data_root)
    table = Table(title=f"Scenes (data root: {data_root(args.data_root)})")
    for col in ("scene", "family", "train", "test", "on disk", "prepared", "size", "download"):
        table.add_column(col, justify="right" if col in ("train", "test", "size", "download") else "left")
    for r in rows:
        table.add_row(r["scene"], r["family"], str(r["train"]), str(r["test"]), "yes" if r["on_disk"] else "no",
                      r["prepared"] or "no", r["size"], r["download"])
    out = Console(width=140)
    out.print(table)
    if any(r["download"] == UNKNOWN_DOWNLOAD for r in rows):
        out.print(UNKNOWN_NOTE.format(path=data_root(args.data_root) / DOWNLOADS_RECORD), highlight=False)
    if getattr(args, "splits", False):
        if any(r["on_disk"] for r in rows):
            return cmd_splits(argparse.Namespace(names=["all"], rule=None, data_root=args.data_root))
        out.print("no scene is on disk: no validation split to show", highlight=False)
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    """Print each scene's train (minus validation) / validation / gap / test frames and what is held out."""
    from rich.console import Console
    from rich.table import Table

    from kdbench.scenes.validation import parse_rule, scene_splits

    rule = parse_rule(args.rule)
    specs = resolve_scenes(args.names)
    on_disk = [s for s in specs if is_on_disk(s, args.data_root)]
    if not on_disk:
        raise KdbenchError(f"none of {', '.join(s.name for s in specs)} is on disk under {data_root(args.data_root)}:"
                           " download or render a scene first (`kdbench scenes list`)")
    table = Table(title=f"Splits ({rule.key}; validation carved from the training split only)")
    for col in ("scene", "train", "val", "gap", "test", "held out", "gap frames"):
        table.add_column(col, justify="right" if col in ("train", "val", "gap", "test") else "left")
    for spec in on_disk:
        s = scene_splits(spec, args.data_root, rule)
        held = ("sequences " if s.mode == "sequences" else "") + ", ".join(s.held_out)
        table.add_row(s.scene, *(str(s.counts[k]) for k in ("train", "val", "gap", "test")), held,
                      "; ".join(s.gaps) or "-")
    Console(width=160).print(table)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download, verify, unpack and prepare real scenes."""
    from kdbench.scenes.cache import prepare_scene
    from kdbench.scenes.download import download_scene

    specs = resolve_scenes(args.names)
    if args.url and len(specs) != 1:
        raise KdbenchError("--url names one download: give exactly one scene with it")
    for spec in specs:
        if spec.synthetic:
            raise KdbenchError(f"{spec.name} is synthetic: render it with `kdbench scenes synth {spec.name}`")
        download_scene(spec, args.data_root, url=args.url, quiet=args.quiet)
        prepare_scene(spec, args.data_root, quiet=args.quiet)
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    """Render a synthetic scene into its real dataset layout, then prepare its cache."""
    from kdbench.scenes.cache import prepare_scene
    from kdbench.scenes.synth import render_scene

    spec = get_scene(args.name)
    if not spec.synthetic:
        raise KdbenchError(f"{spec.name} is a real scene: fetch it with `kdbench scenes download {spec.name}`")
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise KdbenchError(f"--size {args.size!r}: expected WIDTHxHEIGHT, e.g. 160x120") from None
    # One lock over render and cache: a second `scenes synth` or `run` waits instead of replacing the
    # folder under this one's cache build.
    with scene_lock(scene_dir(spec, args.data_root), f"rendering {spec.name}", quiet=args.quiet):
        path = render_scene(spec, args.data_root, frames_per_seq=args.frames, size=(w, h), seed=args.seed,
                            quiet=args.quiet)
        # Synthetic scenes serve the offline quick preset: cache at its size rather than upsampling to 256 px.
        prepare_scene(spec, args.data_root, load_size=get_preset("quick").load_size, quiet=args.quiet)
    print(path)
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Verify (rebuilding what is stale or damaged) the caches of scenes on disk; print their fingerprints."""
    from kdbench.scenes.cache import prepare_scene

    load_size = args.load_size or get_preset(args.preset).load_size
    for spec in resolve_scenes(args.names):
        if not is_on_disk(spec, args.data_root):
            how = "synth" if spec.synthetic else "download"
            raise KdbenchError(f"{spec.name} is not on disk under {data_root(args.data_root)}: run "
                               f"`kdbench scenes {how} {spec.name}` first")
        fingerprint = prepare_scene(spec, args.data_root, load_size=load_size, quiet=args.quiet)
        print(f"{spec.name}\t{load_size}px\tdata {fingerprint}")
    return 0
