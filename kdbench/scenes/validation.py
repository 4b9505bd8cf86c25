"""The validation split: carved from a scene's TRAINING split only, deterministic, never from test frames.

A sequence is what the readers already know: the first folder of a frame's path relative to the scene
folder (7-Scenes `seq-XX/`, Cambridge `seqN/`, Street's `img_*/`).

Rule `holdout` (parameters `fraction`, `gap`):
- A scene with two or more training sequences holds out whole sequences: k = round(fraction x sequences),
  at least 1 and at most all but one, chosen evenly spaced in natural name order, the last one included
  (k = 1: the last sequence by name; 7-Scenes Stairs trains on seq-02, 03, 05, 06 and validates on seq-06;
  Fire, with two training sequences, validates on one of them, half its training frames).
  Whole sequences, because neighbouring frames of one video are near duplicates: a frame held out beside
  its neighbours in training would be scored on what the network has seen. The last by name needs no
  seed, does not depend on the order the files were listed in, and no sequence of these datasets is
  special (train and test sequences are interleaved in recording order); spacing several evenly keeps a
  scene whose sequences were recorded place by place from losing one whole region.
- A scene with one training sequence (Cambridge ShopFacade trains on seq2 only; 7-Scenes Heads) holds
  out a contiguous block at the end of each training sequence: the last round(fraction x n) frames, in
  natural name order. `gap` x n frames (at least 1) on both sides of the block are dropped from both
  parts: those just before it, and, since the block ends the sequence, the sequence's first frames, which
  are its neighbours when a hand-held trajectory closes on itself (the synthetic scenes' loops do).
  The gap is a share of the sequence rather than a frame count, so that it spans about the same time at
  7-Scenes' 30 Hz and Cambridge's ~2 Hz sampling.

The rule's text (`ValRule.key`, e.g. "holdout:fraction=0.2,gap=0.05") is part of the identity of
validation-scored jobs only (`TrainConfig.val_rule`), recorded in their config in the results store.
Nothing here knows methods or models; it maps image paths to row indices of the train split.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from kdbench.errors import KdbenchError

RULES = ("holdout",)
DEFAULT_FRACTION = 0.2
DEFAULT_GAP = 0.05
PARTS = ("train", "val", "gap", "test")


@dataclass(frozen=True)
class ValRule:
    """How a validation split is carved from the training split (see the module docstring)."""

    name: str = "holdout"
    fraction: float = DEFAULT_FRACTION
    gap: float = DEFAULT_GAP

    def __post_init__(self):
        if self.name not in RULES:
            raise KdbenchError(f"unknown validation rule {self.name!r}: use one of {', '.join(RULES)}")
        if not 0.0 < self.fraction < 1.0:
            raise KdbenchError(f"validation fraction {self.fraction!r} must lie strictly between 0 and 1 "
                               "(e.g. 0.2)")
        if not 0.0 <= self.gap < 0.5:
            raise KdbenchError(f"validation gap {self.gap!r} must be a share of a sequence in [0, 0.5) (e.g. 0.05)")

    @property
    def key(self) -> str:
        """The rule's text: stable, recorded in job configs, parsed back by `parse_rule`."""
        return f"{self.name}:fraction={self.fraction:g},gap={self.gap:g}"


DEFAULT_RULE = ValRule()
DEFAULT_RULE_KEY = DEFAULT_RULE.key


def parse_rule(text: str | ValRule | None) -> ValRule:
    """A ValRule from its text ('holdout:fraction=0.2,gap=0.05'); None is the default rule."""
    if text is None:
        return DEFAULT_RULE
    if isinstance(text, ValRule):
        return text
    name, _, params = str(text).strip().partition(":")
    values: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in params.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in ("fraction", "gap"):
            raise KdbenchError(f"validation rule {text!r}: expected NAME:fraction=F,gap=G "
                               f"(e.g. {DEFAULT_RULE_KEY}), found {item!r}")
        try:
            values[key] = float(value)
        except ValueError:
            raise KdbenchError(f"validation rule {text!r}: {key}={value!r} is not a number") from None
    return ValRule(name.strip(), **values)


@dataclass(frozen=True)
class ValSplit:
    """Rows (indices into the train split's frame list) of each part, and what was held out."""

    train: np.ndarray  # train minus val minus gap
    val: np.ndarray
    gap: np.ndarray  # dropped from both
    mode: str  # "sequences" | "block"
    held_out: tuple[str, ...]  # "seq-06", or "seq2 frames 186-231 of 231"
    gaps: tuple[str, ...]  # "seq2 frames 1-12, 174-185"
    rule: ValRule


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """'seq2' < 'seq13'; 'frame00002' < 'frame00010'."""
    return tuple(int(t) if t.isdigit() else t.lower() for t in _DIGITS.split(text))


def sequence_of(rel_path: str) -> str:
    """The sequence of a frame: the first folder of its path relative to the scene ('' when none)."""
    parts = PurePosixPath(Path(rel_path).as_posix()).parts
    return parts[0] if len(parts) > 1 else ""


def carve(image_paths: Sequence[str], rule: ValRule | str | None = None) -> ValSplit:
    """Split the train split's frames (paths relative to the scene folder) into train / val / gap rows."""
    rule = parse_rule(rule)
    paths = [Path(p).as_posix() for p in image_paths]
    dupes = _first_duplicate(paths)
    if dupes:
        raise KdbenchError(f"the training split lists {dupes} twice: a frame can be in one part only")
    by_seq: dict[str, list[int]] = {}
    for row, p in enumerate(paths):
        by_seq.setdefault(sequence_of(p), []).append(row)
    seqs = sorted(by_seq, key=natural_key)
    for s in seqs:
        by_seq[s].sort(key=lambda r: natural_key(paths[r]))
    if not paths:
        raise KdbenchError("the training split has no frames: nothing to carve a validation split from")
    if len(seqs) >= 2:
        split = _hold_out_sequences(by_seq, seqs, rule)
    else:
        split = _hold_out_blocks(by_seq, seqs, paths, rule)
    check_disjoint({"train": [paths[r] for r in split.train], "val": [paths[r] for r in split.val],
                    "gap": [paths[r] for r in split.gap]})
    return split


def _rows(rows: list[int]) -> np.ndarray:
    return np.array(sorted(rows), dtype=np.int64)


def _hold_out_sequences(by_seq: dict[str, list[int]], seqs: list[str], rule: ValRule) -> ValSplit:
    n = len(seqs)
    k = min(n - 1, max(1, round(rule.fraction * n)))
    chosen = [seqs[round((j + 1) * n / k) - 1] for j in range(k)]  # evenly spaced, the last included
    val = [r for s in chosen for r in by_seq[s]]
    train = [r for s in seqs if s not in chosen for r in by_seq[s]]
    return ValSplit(_rows(train), _rows(val), _rows([]), "sequences", tuple(chosen), (), rule)


def _hold_out_blocks(by_seq: dict[str, list[int]], seqs: list[str], paths: list[str], rule: ValRule) -> ValSplit:
    train, val, gap, held, gaps = [], [], [], [], []
    for s in seqs:
        rows = by_seq[s]
        n = len(rows)
        n_val = max(1, round(rule.fraction * n))
        g = max(1, round(rule.gap * n)) if rule.gap > 0 else 0
        n_train = n - n_val - 2 * g
        if n_train < 1:
            name = s or "the scene folder"
            raise KdbenchError(f"sequence {name} has {n} training frames, too few for a validation block of "
                               f"{n_val} with gaps of {g} ({rule.key}): lower the fraction or the gap")
        train += rows[g:g + n_train]
        gap += rows[:g] + rows[g + n_train:n - n_val]
        val += rows[n - n_val:]
        label = s or "(no folder)"
        held.append(f"{label} frames {n - n_val + 1}-{n} of {n}")
        if g:
            gaps.append(f"{label} frames 1-{g}, {g + n_train + 1}-{n - n_val}")
    return ValSplit(_rows(train), _rows(val), _rows(gap), "block", tuple(held), tuple(gaps), rule)


def _first_duplicate(paths: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for p in paths:
        if p in seen:
            return p
        seen.add(p)
    return None


def check_disjoint(parts: dict[str, Sequence[str]]) -> None:
    """No frame in two parts and none twice in one: the split-integrity rule, for train/val/gap/test."""
    where: dict[str, str] = {}
    for part, paths in parts.items():
        for p in paths:
            key = Path(p).as_posix()
            if key in where:
                other = where[key]
                what = "is listed twice in" if other == part else f"is in both {other} and"
                raise KdbenchError(f"frame {key} {what} {part}: each frame may be in one part of a scene's "
                                   "splits only (leakage); fix the scene's split files")
            where[key] = part


@dataclass(frozen=True)
class SplitSummary:
    """What `kdbench scenes splits` shows for one scene on disk."""

    scene: str
    counts: dict[str, int]  # train (minus val and gap) / val / gap / test frames
    mode: str
    held_out: tuple[str, ...]
    gaps: tuple[str, ...]
    rule: str
    parts: dict[str, list[str]]  # part -> frame paths relative to the scene folder


def scene_splits(spec_or_name, data_root: str | os.PathLike | None = None,
                 rule: ValRule | str | None = None, check_images: bool = True) -> SplitSummary:
    """The four parts of a scene on disk (reads its label files only, decodes nothing), checked disjoint."""
    from kdbench.scenes.catalog import get_scene, scene_dir
    from kdbench.scenes.readers import read_split

    spec = get_scene(spec_or_name)
    root = scene_dir(spec, data_root).resolve()
    rel = {split: [Path(os.path.relpath(f.image_path, root)).as_posix()
                   for f in read_split(root, spec, split, check_images=check_images)] for split in ("train", "test")}
    split = carve(rel["train"], rule)
    parts = {"train": [rel["train"][r] for r in split.train], "val": [rel["train"][r] for r in split.val],
             "gap": [rel["train"][r] for r in split.gap], "test": rel["test"]}
    check_disjoint(parts)
    return SplitSummary(spec.name, {k: len(v) for k, v in parts.items()}, split.mode, split.held_out,
                        split.gaps, split.rule.key, parts)
