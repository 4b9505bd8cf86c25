"""The scene catalog: every real Cambridge Landmarks and 7-Scenes scene, plus the synthetic ones."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

from kdbench.errors import KdbenchError

LOCKS_DIRNAME = ".kdbench-locks"  # under the data root: the scene folder itself is replaced by a render
CAMBRIDGE_BASE = "https://www.repository.cam.ac.uk/bitstream/handle/1810"
SEVEN_SCENES_BASE = "http://download.microsoft.com/download/2/8/5/28564B23-0828-408F-8631-23B1EFF1DAC8"


@dataclass(frozen=True)
class SceneSpec:
    """What the suite knows about one scene before it is on disk."""

    name: str  # display name, e.g. "ShopFacade", "Stairs"
    family: str  # "cambridge" | "7scenes" | "synthetic"
    layout: str  # on-disk layout the readers use: "cambridge" | "7scenes"
    folder: str  # folder name under the data root (the name the official zip unpacks to)
    n_train: int
    n_test: int
    train_seqs: tuple[int, ...] = ()
    test_seqs: tuple[int, ...] = ()
    beta: float = 500.0  # PoseNet quaternion weight suggested for this scene
    url: str | None = None
    zip_bytes: int | None = None  # expected download size, verified when known
    sha256: str | None = None
    licence: str = ""

    @property
    def synthetic(self) -> bool:
        return self.family == "synthetic"


_CAM_LIC = "CC BY-NC-SA 2.0 UK"
_7S_LIC = "Microsoft Research non-commercial"


def _cam(name: str, handle: int, n_train: int, n_test: int, train: tuple, test: tuple, beta: float):
    return SceneSpec(name, "cambridge", "cambridge", name, n_train, n_test, train, test, beta,
                     f"{CAMBRIDGE_BASE}/{handle}/{name}.zip", licence=_CAM_LIC)


def _7s(name: str, n_train: int, n_test: int, train: tuple, test: tuple):
    folder = name.lower()
    return SceneSpec(name, "7scenes", "7scenes", folder, n_train, n_test, train, test, 500.0,
                     f"{SEVEN_SCENES_BASE}/{folder}.zip", licence=_7S_LIC)


# Split sizes and sequences from DATASETS.md; beta from earlier PoseNet work where it exists.
CATALOG: tuple[SceneSpec, ...] = (
    _cam("KingsCollege", 251342, 1220, 343, (1, 4, 5, 6, 8), (2, 3, 7), 500.0),
    _cam("OldHospital", 251340, 895, 182, (), (4, 8), 1500.0),
    _cam("ShopFacade", 251336, 231, 103, (2,), (1, 3), 100.0),
    _cam("StMarysChurch", 251294, 1487, 530, (), (3, 5, 13), 250.0),
    _cam("GreatCourt", 251291, 1532, 760, (2, 3, 5), (1, 4), 500.0),
    _cam("Street", 251292, 3015, 2923, (), (), 500.0),
    _7s("Chess", 4000, 2000, (1, 2, 4, 6), (3, 5)),
    _7s("Fire", 2000, 2000, (1, 2), (3, 4)),
    _7s("Heads", 1000, 1000, (2,), (1,)),
    _7s("Office", 6000, 4000, (1, 3, 4, 5, 8, 10), (2, 6, 7, 9)),
    _7s("Pumpkin", 4000, 2000, (2, 3, 6, 8), (1, 7)),
    _7s("RedKitchen", 7000, 5000, (1, 2, 5, 7, 8, 11, 13), (3, 4, 6, 12, 14)),
    _7s("Stairs", 2000, 1000, (2, 3, 5, 6), (1, 4)),
    # Rendered offline by `kdbench scenes synth`: 6 sequences of 100 frames, train 1-4, test 5-6.
    SceneSpec("SynthRoom", "synthetic", "7scenes", "SynthRoom", 400, 200, (1, 2, 3, 4), (5, 6), 10.0,
              licence="generated"),
    SceneSpec("SynthStreet", "synthetic", "cambridge", "SynthStreet", 400, 200, (1, 2, 3, 4), (5, 6), 100.0,
              licence="generated"),
)

GROUPS: dict[str, tuple[str, ...]] = {
    "cambridge": tuple(s.name for s in CATALOG if s.family == "cambridge"),
    "7scenes": tuple(s.name for s in CATALOG if s.family == "7scenes"),
    "synthetic": tuple(s.name for s in CATALOG if s.family == "synthetic"),
    "real": tuple(s.name for s in CATALOG if s.family != "synthetic"),
    "all": tuple(s.name for s in CATALOG),
}

_BY_KEY = {s.name.lower(): s for s in CATALOG}


def get_scene(name: str | SceneSpec) -> SceneSpec:
    """The catalog entry of a scene, matched case-insensitively; unknown names suggest the closest."""
    if isinstance(name, SceneSpec):
        return name
    key = str(name).strip().lower()
    if key in _BY_KEY:
        return _BY_KEY[key]
    options = [s.name for s in CATALOG] + list(GROUPS)
    by_lower = {o.lower(): o for o in options}
    close_names = [by_lower[c] for c in difflib.get_close_matches(key, list(by_lower), n=3, cutoff=0.5)]
    hint = f" Did you mean {', '.join(close_names)}?" if close_names else ""
    raise KdbenchError(
        f"unknown scene {name!r}.{hint} Known scenes: {', '.join(s.name for s in CATALOG)}; "
        f"groups: {', '.join(GROUPS)} (see `kdbench scenes list`)."
    )


def resolve_scenes(names: str | list[str] | tuple[str, ...]) -> list[SceneSpec]:
    """Scenes named by a comma-separated string or a list; groups expand, duplicates drop, order kept."""
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    out: list[SceneSpec] = []
    for raw in names:
        key = raw.strip().lower()
        if not key:
            continue
        specs = [get_scene(n) for n in GROUPS[key]] if key in GROUPS else [get_scene(key)]
        out.extend(s for s in specs if s not in out)
    if not out:
        raise KdbenchError("no scene given: name scenes or groups, e.g. --scenes ShopFacade,Stairs or synthetic")
    return out


def data_root(arg: str | os.PathLike | None = None) -> Path:
    """The folder that holds scene folders: the argument, else $KDBENCH_DATA, else ./datasets."""
    env = os.environ.get("KDBENCH_DATA")
    if arg:
        path, given = Path(arg).expanduser().resolve(), f"--data-root {arg}"
    elif env:
        path, given = Path(env).expanduser().resolve(), f"$KDBENCH_DATA={env}"
    else:
        path, given = Path("datasets").resolve(), "the default data root ./datasets"
    if path.exists() and not path.is_dir():
        raise KdbenchError(f"{given} names {path}, which is a file, not a folder: pass the folder that holds "
                           "the scene folders (it is created when missing)")
    return path


def scene_dir(spec: SceneSpec | str, root: str | os.PathLike | None = None) -> Path:
    """Where a scene lives on disk under the data root."""
    return data_root(root) / get_scene(spec).folder


def split_files(spec: SceneSpec | str, root: Path) -> list[Path]:
    """The label/split files whose presence means the scene is on disk."""
    spec = get_scene(spec)
    if spec.layout == "cambridge":
        return [root / "dataset_train.txt", root / "dataset_test.txt"]
    return [root / "TrainSplit.txt", root / "TestSplit.txt"]


def is_on_disk(spec: SceneSpec | str, root: str | os.PathLike | None = None) -> bool:
    """True when the scene folder holds its split files (a finished download or render)."""
    d = scene_dir(spec, root)
    return all(p.is_file() for p in split_files(spec, d))


def scene_lock(scene_root: str | os.PathLike, what: str, quiet: bool = False):
    """The lock that one process holds while it renders, unpacks or caches the scene in `scene_root`.

    It lives beside the scene folder (`<data root>/.kdbench-locks/<folder>.lock`), since a render replaces
    the scene folder itself; a second process waits for the first instead of building under its feet.
    """
    from kdbench.locks import file_lock

    root = Path(scene_root)
    return file_lock(root.parent / LOCKS_DIRNAME / f"{root.name}.lock", what, quiet=quiet)
