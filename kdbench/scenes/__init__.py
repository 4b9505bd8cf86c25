"""Scenes: catalog, readers, download, synthetic rendering, decoded cache and torch Dataset."""

from kdbench.scenes.catalog import (
    CATALOG,
    GROUPS,
    SceneSpec,
    data_root,
    get_scene,
    is_on_disk,
    resolve_scenes,
    scene_dir,
)
from kdbench.scenes.readers import Frame, camera_to_world, pose_label, read_split

__all__ = [
    "CATALOG", "GROUPS", "Frame", "SceneSpec", "camera_to_world", "data_root", "get_scene", "is_on_disk",
    "pose_label", "read_split", "resolve_scenes", "scene_dir",
]
