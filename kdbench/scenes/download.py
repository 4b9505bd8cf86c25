"""Download, verify and unpack real scenes: resumable HTTP, size and sha256 checks, a strict unzip.

Work files live in `<root>/.downloads/`: `<folder>.zip.part` while streaming, `<folder>.zip` once the
transfer is complete, and `<folder>.zip.json` (source URL, validators, size) so that a rerun resumes
only the same file. The scene is unpacked into `<root>/.downloads/<folder>.unpack` and renamed to
`<root>/<folder>` only after `read_split` accepts both splits: the split files are what makes a scene
look ready (`is_on_disk`), so an interrupted run never leaves one that does.

Only what the layout needs is unpacked: the split files first, then the images they list (Cambridge) or
the listed sequences' `frame-*.color.png` and `frame-*.pose.txt` (7-Scenes; depth maps, videos, the SfM
reconstruction and anything else are left in the zip, and counted in a note). Every member is still
checked for unsafe paths, and one that would expand more than MAX_RATIO times its compressed size
(a zip bomb; images and pose files expand little) refuses the archive.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kdbench import __version__
from kdbench.errors import KdbenchError
from kdbench.fileio import write_json_atomic
from kdbench.progress import console, make_progress
from kdbench.scenes.catalog import SceneSpec, data_root, get_scene, is_on_disk, scene_dir, scene_lock, split_files
from kdbench.scenes.readers import SPLITS, read_sequences, read_split
from kdbench.scenes.status import record_download

DOWNLOADS_DIRNAME = ".downloads"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # per connect and per read; the Cambridge repository can be slow to start a transfer
ATTEMPTS = 3  # transfers cut mid-way are resumed this many times before giving up
RETRY_WAIT_S = 2.0
USER_AGENT = f"kdbench/{__version__} (Python-urllib)"
JUNK_NAMES = {"thumbs.db", ".ds_store"}
MAX_RATIO = 100  # uncompressed / compressed size of one member, above MIN_RATIO_BYTES
MIN_RATIO_BYTES = 1 << 20
_FRAME_RE = re.compile(r"frame-\d+\.(color\.png|pose\.txt)", re.IGNORECASE)
_RETRY_HINT = ("Check the connection and rerun the same command (a partial download is kept and resumes), "
               "or pass another mirror or a local zip with --url.")
_URL_HINT = "Check the URL, or pass a working mirror or a local zip with --url."


class _Interrupted(Exception):
    """A transfer that stopped part-way; the next attempt resumes it."""


class _BadArchive(KdbenchError):
    """The downloaded file itself is wrong (size, checksum, not a zip, unsafe or incomplete content)."""


def download_scene(spec_or_name: SceneSpec | str, root: str | os.PathLike | None = None,
                   url: str | None = None, quiet: bool = False) -> Path:
    """Fetch, verify and unpack a real scene into `<root>/<folder>`; returns the ready scene folder."""
    spec = get_scene(spec_or_name)
    target = scene_dir(spec, root)
    if is_on_disk(spec, root):
        console.print(f"{spec.name} is already on disk at {target}; not downloading it again",
                      markup=False, highlight=False)
        return target
    source = url or spec.url
    if not source:
        synth = f", or render it with `kdbench scenes synth {spec.name}`" if spec.synthetic else ""
        raise KdbenchError(f"{spec.name} has no download URL: pass one with --url{synth}")
    work = data_root(root) / DOWNLOADS_DIRNAME
    work.mkdir(parents=True, exist_ok=True)
    # The scene lock (shared with renders and cache builds): one process downloads, the others wait.
    with scene_lock(target, f"downloading {spec.name}", quiet=quiet):
        if is_on_disk(spec, root):  # another process finished it while this one waited for the lock
            return target
        _check_target(target, spec)
        local = _local_archive(source)
        archive = local or fetch(source, work / f"{spec.folder}.zip", quiet, spec.zip_bytes)
        size, digest = _verify_and_install(archive, spec, source, target, work / f"{spec.folder}.unpack",
                                           owned=local is None, quiet=quiet)
        record_download(spec, root, size, digest, source)  # `kdbench scenes list` shows the size from now on
    _note(quiet, f"{spec.name} is ready in {target}")
    return target


def fetch(url: str, dest: str | os.PathLike, quiet: bool = False, expected_bytes: int | None = None) -> Path:
    """Stream `url` into `dest` through `<dest>.part`, resuming and retrying cut transfers; returns `dest`."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _discard_other_source(url, dest, quiet)
    if not dest.is_file():
        _fetch_with_retries(url, dest, expected_bytes, quiet)
    size = dest.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        _discard(dest)
        raise KdbenchError(f"size mismatch for {url}: expected {expected_bytes} bytes, got {size}; the file "
                           "was removed. Rerun to download it again, or pass another mirror with --url.")
    return dest


def _fetch_with_retries(url: str, dest: Path, expected: int | None, quiet: bool) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _fetch_once(url, dest, expected, quiet)
            return
        except _Interrupted as exc:
            if attempt == ATTEMPTS:
                kept = f"{_part(dest)} is kept. " if _part(dest).exists() else ""
                raise KdbenchError(f"download of {url} was interrupted ({exc}) {ATTEMPTS} times; "
                                   f"{kept}{_RETRY_HINT}") from None
            _note(quiet, f"transfer of {url} interrupted ({exc}); resuming ({attempt + 1}/{ATTEMPTS})")
            time.sleep(RETRY_WAIT_S * attempt)


def _fetch_once(url: str, dest: Path, expected: int | None, quiet: bool) -> None:
    part = _part(dest)
    offset = part.stat().st_size if part.is_file() else 0
    try:
        resp = urllib.request.urlopen(_request(url, offset, _read_meta(dest)), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            _range_not_satisfiable(exc, dest, offset)
            return
        # Server trouble (5xx) may pass; a missing or forbidden file (4xx) needs another URL.
        hint = _RETRY_HINT if exc.code >= 500 else _URL_HINT
        raise KdbenchError(f"download of {url} failed: HTTP {exc.code} {exc.reason}. {hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KdbenchError(f"cannot download {url}: {reason}. {_RETRY_HINT}") from None
    with resp:
        offset, total = _start_body(resp, url, dest, offset, expected, quiet)
        _stream(resp, part, offset, total if total is not None else expected, dest.name, quiet)
    _finish_part(url, dest, total if total is not None else expected)


def _request(url: str, offset: int, meta: dict) -> urllib.request.Request:
    # identity: sizes must be the file's own bytes, not a compressed transfer
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        # If-Range makes the server send the whole file (200) when it changed since the part was written
        etag = meta.get("etag")
        validator = etag if etag and not etag.startswith("W/") else meta.get("last_modified")
        if validator:
            headers["If-Range"] = validator
    return urllib.request.Request(url, headers=headers)


def _start_body(resp, url: str, dest: Path, offset: int, expected: int | None,
                quiet: bool) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's total size, from the status and headers."""
    if resp.status == 206:
        start, total = _content_range(resp.headers.get("Content-Range"))
        recorded = _read_meta(dest).get("total")
        if start != offset or (total is not None and recorded is not None and total != recorded):
            _discard(dest)
            raise _Interrupted("the server's range does not continue the partial file; starting over")
        _check_total(url, dest, total, expected)
        _note(quiet, f"resuming {dest.name} at {offset} bytes")
        return offset, total
    if resp.status != 200:
        raise KdbenchError(f"download of {url} failed: unexpected HTTP {resp.status}. {_RETRY_HINT}")
    if offset:
        _note(quiet, f"{url} ignored the range request (HTTP 200); starting over")
    total = _int_or_none(resp.headers.get("Content-Length"))
    _check_total(url, dest, total, expected)
    write_json_atomic(_meta(dest), {"url": url, "etag": resp.headers.get("ETag"),
                                    "last_modified": resp.headers.get("Last-Modified"), "total": total})
    _part(dest).unlink(missing_ok=True)
    return 0, total


def _check_total(url: str, dest: Path, total: int | None, expected: int | None) -> None:
    # Fail before streaming gigabytes of the wrong file.
    if total is not None and expected is not None and total != expected:
        _discard(dest)
        raise KdbenchError(f"size mismatch for {url}: expected {expected} bytes, the server reports {total}; "
                           "the partial file was removed. Pass the right mirror with --url.")


def _stream(resp, part: Path, offset: int, total: int | None, label: str, quiet: bool) -> None:
    try:
        with make_progress(quiet, transfer=True) as progress, open(part, "ab") as fh:
            task = progress.add_task(label, total=total, completed=offset)
            while chunk := _read_chunk(resp):
                fh.write(chunk)
                progress.advance(task, len(chunk))
    except OSError as exc:  # disk full, permissions: reads are handled in _read_chunk
        raise KdbenchError(f"cannot write {part}: {exc}. Free some space and rerun to resume.") from None


def _read_chunk(resp) -> bytes:
    try:
        return resp.read(CHUNK_BYTES)
    except (OSError, http.client.HTTPException) as exc:
        raise _Interrupted(str(exc) or type(exc).__name__) from None


def _finish_part(url: str, dest: Path, total: int | None) -> None:
    part = _part(dest)
    got = part.stat().st_size if part.is_file() else 0
    if total is not None and got < total:
        # http.client returns a short body without raising when the server closes early
        raise _Interrupted(f"{got} of {total} bytes received")
    if total is not None and got > total:
        _discard(dest)
        raise KdbenchError(f"size mismatch for {url}: expected {total} bytes, got {got}; the file was "
                           "removed. Rerun to download it again.")
    os.replace(part, dest)


def _range_not_satisfiable(exc: urllib.error.HTTPError, dest: Path, offset: int) -> None:
    """A 416 answer: the part is already whole, or it no longer matches the server's file."""
    _, total = _content_range(exc.headers.get("Content-Range"))
    if total == offset:
        os.replace(_part(dest), dest)
        return
    _discard(dest)
    raise _Interrupted("the partial file does not match the server's; starting over")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header such as 'bytes 10-99/100' or 'bytes */100'."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return _int_or_none(m.group(1)), _int_or_none(m.group(2))


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _meta(dest: Path) -> Path:
    return dest.with_name(dest.name + ".json")


def _read_meta(dest: Path) -> dict:
    try:
        meta = json.loads(_meta(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _discard_other_source(url: str, dest: Path, quiet: bool) -> None:
    # Resuming bytes of another URL's file would splice two different files together.
    if _read_meta(dest).get("url") == url:
        return
    if dest.exists() or _part(dest).exists():
        _note(quiet, f"discarding {dest.name} downloaded from another URL")
    _discard(dest)


def _discard(dest: Path) -> None:
    for p in (dest, _part(dest), _meta(dest)):
        p.unlink(missing_ok=True)


def _check_target(target: Path, spec: SceneSpec) -> None:
    if target.is_dir() and not any(target.iterdir()):
        return
    if target.exists():
        names = " and ".join(p.name for p in split_files(spec, target))
        raise KdbenchError(f"{target} exists but is not a complete {spec.name} scene (no {names}): "
                           "move or delete it, then rerun; kdbench does not overwrite it")


def _local_archive(source: str) -> Path | None:
    """The local zip that --url names (a path or a file: URL), or None for a download."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme.lower() in ("http", "https", "ftp"):
        return None
    if parsed.scheme.lower() == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
    else:
        path = Path(source).expanduser()
    if not path.is_file():
        raise KdbenchError(f"--url {source!r} is neither an http(s) URL nor an existing zip file")
    return path.resolve()


def _verify_and_install(archive: Path, spec: SceneSpec, source: str, target: Path, work: Path,
                        owned: bool, quiet: bool) -> tuple[int, str]:
    try:
        size, digest = _verify(archive, spec, source, quiet)
        _install(archive, spec, source, target, work, quiet)
    except _BadArchive as exc:
        if not owned:  # never delete a zip the user pointed at
            raise
        _discard(archive)
        raise KdbenchError(f"{exc} The downloaded file was removed.") from None
    if owned:
        _discard(archive)
    return size, digest


def _verify(archive: Path, spec: SceneSpec, source: str, quiet: bool) -> tuple[int, str]:
    size = archive.stat().st_size
    if spec.zip_bytes is not None and size != spec.zip_bytes:
        raise _BadArchive(f"size mismatch for {spec.name} from {source}: expected {spec.zip_bytes} bytes, "
                          f"got {size}.")
    digest = _sha256(archive, quiet)
    if spec.sha256 and digest != spec.sha256.lower():
        raise _BadArchive(f"sha256 mismatch for {spec.name} from {source}: expected {spec.sha256}, "
                          f"got {digest}.")
    if not spec.sha256:  # printed so that the catalog can record it
        _note(quiet, f"{spec.name}: {size} bytes, sha256 {digest} (not in the catalog yet)")
    return size, digest


def _sha256(path: Path, quiet: bool) -> str:
    h = hashlib.sha256()
    with make_progress(quiet, transfer=True) as progress, open(path, "rb") as fh:
        task = progress.add_task(f"sha256 {path.name}", total=path.stat().st_size)
        while chunk := fh.read(CHUNK_BYTES):
            h.update(chunk)
            progress.advance(task, len(chunk))
    return h.hexdigest()


def _install(archive: Path, spec: SceneSpec, source: str, target: Path, work: Path, quiet: bool) -> None:
    """Unpack into `work`, check both splits, then rename `work` to `target` in one step."""
    shutil.rmtree(work, ignore_errors=True)  # left by a killed run; this process holds the lock
    try:
        _unpack_scene(archive, work, spec, source, quiet)
        _check_scene(work, spec, source, quiet)
        if target.is_dir():
            target.rmdir()  # empty, checked by _check_target
        os.replace(work, target)
    except OSError as exc:
        raise KdbenchError(f"cannot unpack {archive} into {work}: {exc}. Free some space and rerun "
                           "(a finished download is kept).") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unpack_scene(archive: Path, dest: Path, spec: SceneSpec, source: str, quiet: bool) -> None:
    label = source if source == str(archive) else f"{source} ({archive})"
    with _open_zip(archive, label) as zf:
        members = _safe_members(zf, label)
        prefix = _scene_prefix(members, spec, label)
        inside = {parts[len(prefix):]: info for info, parts in members
                  if parts[:len(prefix)] == prefix and len(parts) > len(prefix)}
        split_names = [(p.name,) for p in split_files(spec, Path())]
        _extract_all(zf, [(inside[n], n) for n in split_names if n in inside], dest, label, quiet)
        needed = _needed(dest, spec, inside, source)
        _extract_all(zf, [(inside[rel], rel) for rel in needed], dest, label, quiet)
    skipped = len(inside) - len(needed) - sum(n in inside for n in split_names)
    for nested in sorted(dest.glob("*.zip")):  # 7-Scenes: <scene>/seq-XX.zip
        skipped += _unpack_nested(nested, dest, f"{nested.name} inside {label}", quiet)
    if skipped:
        _note(quiet, f"left {skipped} file(s) in the archive that the {spec.layout} layout does not need "
                     "(depth maps, videos, reconstructions, anything not listed in the split files)")


def _needed(dest: Path, spec: SceneSpec, inside: dict, source: str) -> list[tuple[str, ...]]:
    """Members (paths below the scene folder) that the split files in `dest` call for."""
    try:
        if spec.layout == "cambridge":
            wanted = []
            for split in SPLITS:
                if (dest / f"dataset_{split}.txt").is_file():  # a missing one is reported by _check_scene
                    frames = read_split(dest, spec, split, check_images=False)
                    wanted += [f.image_path.relative_to(dest.resolve()).parts for f in frames]
            return [rel for rel in dict.fromkeys(wanted) if rel in inside]
        seqs: list[int] = []
        for name in ("TrainSplit.txt", "TestSplit.txt"):
            if (dest / name).is_file():
                seqs += list(read_sequences(dest / name))
    except KdbenchError as exc:
        raise _BadArchive(f"{source} did not unpack to a complete {spec.name} scene: {exc}.") from None
    folders = {f"seq-{s:02d}" for s in seqs}
    return [rel for rel in inside
            if (len(rel) == 1 and rel[0].lower().endswith(".zip") and rel[0][:-4] in folders)
            or (len(rel) == 2 and rel[0] in folders and _FRAME_RE.fullmatch(rel[1]))]


def _unpack_nested(nested: Path, scene_root: Path, label: str, quiet: bool) -> int:
    """Unpack the frames of seq-XX.zip into seq-XX/, whether or not its members sit in a seq-XX folder.

    Returns how many members were left out (not colour frames or poses).
    """
    stem = nested.stem
    with _open_zip(nested, label) as zf:
        members = _safe_members(zf, label)
        inside = all(len(parts) > 1 and parts[0] == stem for _, parts in members)
        chosen = [(info, parts if inside else (stem, *parts)) for info, parts in members]
        frames = [(info, rel) for info, rel in chosen if len(rel) == 2 and _FRAME_RE.fullmatch(rel[1])]
        _extract_all(zf, frames, scene_root, label, quiet)
    nested.unlink()
    return len(chosen) - len(frames)


@contextmanager
def _open_zip(path: Path, label: str) -> Iterator[zipfile.ZipFile]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise _BadArchive(f"{label} is not a valid zip archive ({exc}): the server may have sent an error "
                          "page; check the URL.") from None
    with zf:
        try:
            yield zf
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise _BadArchive(f"{label} is corrupt ({exc}).") from None


def _safe_members(zf: zipfile.ZipFile, label: str) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Every file member with its path parts, junk left out; any unsafe member refuses the archive."""
    out = []
    for info in zf.infolist():
        parts = _member_parts(info, label)
        if parts and not info.is_dir() and not _junk(parts):
            out.append((info, parts))
    return out


def _member_parts(info: zipfile.ZipInfo, label: str) -> tuple[str, ...]:
    name = info.filename.replace("\\", "/")  # zips written on Windows may use backslashes
    parts = name.split("/")
    problem = None
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        problem = "is an absolute path"
    elif ".." in parts:
        problem = "contains '..'"
    elif stat.S_ISLNK(info.external_attr >> 16):
        problem = "is a symbolic link"
    if problem:
        raise _BadArchive(f"refusing to unpack {label}: member {info.filename!r} {problem}, which could "
                          "write outside the scene folder; this is not a genuine scene archive.")
    return tuple(p for p in parts if p not in ("", "."))


def _junk(parts: tuple[str, ...]) -> bool:
    return parts[0] == "__MACOSX" or parts[-1].lower() in JUNK_NAMES


def _scene_prefix(members: list, spec: SceneSpec, label: str) -> tuple[str, ...]:
    """The folder inside the zip that holds the scene (the first split file's folder; () when at the top)."""
    marker = split_files(spec, Path())[0].name
    hits = [parts[:-1] for _, parts in members if parts[-1] == marker]
    if not hits:
        raise _BadArchive(f"{label} holds no {marker}: it is not a {spec.layout} scene archive for "
                          f"{spec.name}; check the URL.")
    # Shallowest first; among equals prefer the folder named like the scene.
    return min(hits, key=lambda p: (len(p), p[-1:] != (spec.folder,)))


def _extract_all(zf: zipfile.ZipFile, chosen: list, dest: Path, label: str, quiet: bool) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    total = sum(info.file_size for info, _ in chosen)
    free = shutil.disk_usage(dest).free
    if total > free:
        raise KdbenchError(f"unpacking {label} needs {total} bytes but {dest} has {free} free: free some "
                           "space and rerun (a finished download is kept).")
    for info, _ in chosen:
        if info.file_size > MIN_RATIO_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise _BadArchive(f"refusing to unpack {label}: member {info.filename!r} would expand from "
                              f"{info.compress_size} to {info.file_size} bytes (over {MAX_RATIO} times), like a "
                              "zip bomb; this is not a genuine scene archive.")
    root = dest.resolve()
    with make_progress(quiet, transfer=True) as progress:
        task = progress.add_task(f"unpack {Path(zf.filename or label).name}", total=total)
        for info, rel in chosen:
            _extract(zf, info, root.joinpath(*rel), root, label)
            progress.advance(task, info.file_size)


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, out: Path, root: Path, label: str) -> None:
    # The member names were checked already; this guards against anything those checks missed.
    if not out.resolve().is_relative_to(root):
        raise _BadArchive(f"refusing to unpack {label}: member {info.filename!r} resolves outside {root}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK_BYTES)


def _check_scene(folder: Path, spec: SceneSpec, source: str, quiet: bool) -> None:
    for split in SPLITS:
        try:
            frames = read_split(folder, spec, split)
        except KdbenchError as exc:
            raise _BadArchive(f"{source} did not unpack to a complete {spec.name} scene: {exc}.") from None
        listed = spec.n_train if split == "train" else spec.n_test
        if len(frames) != listed:
            _note(quiet, f"note: the {split} split of {spec.name} has {len(frames)} frames; "
                         f"the catalog lists {listed}")


def _note(quiet: bool, message: str) -> None:
    if not quiet:
        console.print(message, markup=False, highlight=False)
