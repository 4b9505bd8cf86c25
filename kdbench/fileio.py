"""Atomic writes: a crash leaves either the old file or the new one, never half of one.

Temporary files are named `.<name>.<pid>@<host>.<random>.tmp` beside their target. A writer killed
mid-write (kill -9, power loss) leaves one behind (up to a whole checkpoint); the next atomic write into
the same folder removes such orphans: those of a dead process on this host, and any older than
`ORPHAN_AGE_S` (a live writer keeps its file's mtime fresh, and renames it as soon as it is complete).

Modes: a new file gets 0666 minus the umask, like `open()` would give it (mkstemp's 0600 would hide
checkpoints and reports from the others sharing a runs folder); a replaced file keeps its mode.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdbench.errors import KdbenchError

ORPHAN_AGE_S = 60.0
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0])[:32] or "host"
_TMP_RE = re.compile(r"^\..+\.(\d+)@([A-Za-z0-9_-]+)\.[^.]+\.tmp$")
_DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}@{_HOST}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_orphans(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files (and folders) that killed writers left in `folder`; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        m = _TMP_RE.match(entry.name)
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > ORPHAN_AGE_S
            dead = bool(m) and m.group(2) == _HOST and int(m.group(1)) != os.getpid() and not _pid_alive(
                int(m.group(1)))
            if entry.is_dir(follow_symlinks=False):
                # A cache build writes into a memory map whose folder mtime does not move: only a dead
                # owner's folder is safe to remove.
                if dead:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(Path(entry.path))
            elif dead or old:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # raced with its owner or another cleaner: nothing to do
            continue
    return removed


def disk_full_error(path: str | os.PathLike, detail: str = "") -> KdbenchError:
    """The one-line error for a write that ran out of space."""
    path = Path(path)
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
        left = f"{free / 2**20:.0f} MiB left on that disk"
    except OSError:
        left = "the disk's free space is unknown"
    return KdbenchError(f"disk full while writing {path} ({left}{'; ' + detail if detail else ''}): free some "
                        "space (or point --runs-dir elsewhere) and rerun; the previous version of the file, if "
                        "any, is unchanged")


def write_error(path: str | os.PathLike, exc: OSError, what: str = "", verb: str = "write") -> KdbenchError:
    """One line for any OSError of a write: which file, what went wrong, and the fix."""
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    code = exc.errno
    if code in _DISK_FULL:
        return disk_full_error(path, exc.strerror or "")
    if code == errno.EROFS:
        why, fix = "the file system is read-only", "point it at a writable folder (or remount the disk read-write)"
    elif code in (errno.EACCES, errno.EPERM):
        why, fix = "permission denied", f"make {path.parent} writable for this user, or write elsewhere"
    elif code == errno.ELOOP:
        why, fix = "a symbolic link on the way loops", "fix or remove the looping link, or write elsewhere"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        why, fix = "a file stands where a folder must be", "remove or rename that file, or write elsewhere"
    elif code == errno.EISDIR:
        why, fix = "it is a folder, not a file", "remove or rename the folder, or write elsewhere"
    elif code == errno.ENAMETOOLONG:
        why, fix = "the name is too long", "use a shorter path"
    else:
        why, fix = exc.strerror or type(exc).__name__, "check the path and its disk, then rerun"
    return KdbenchError(f"cannot {verb} {name}: {why} ({errno.errorcode.get(code, exc)}): {fix}; nothing "
                        "already written was changed")


@contextmanager
def translated_writes(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Turn any OSError raised inside into `write_error`'s one line (KdbenchErrors pass through)."""
    try:
        yield
    except KdbenchError:
        raise
    except OSError as exc:
        raise write_error(getattr(exc, "filename", None) or path, exc, what) from None


def ensure_dir(path: str | os.PathLike, what: str = "") -> Path:
    """Create folder `path` (and parents), or a one-line error: it is a file, a link loops, it is read-only..."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise KdbenchError(f"{what + ' ' if what else ''}{path} is a file, not a folder: pass a folder (it is "
                           "created when missing)")
    with translated_writes(path, what):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    # torch.save reports a short write as "[enforce fail at inline_container.cc:NNN] . unexpected pos A vs B"
    return isinstance(exc, RuntimeError) and "unexpected pos" in str(exc)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise KdbenchError(f"cannot write {path}: {path.parent} is a file, not a folder") from None
    except OSError as exc:
        raise write_error(path, exc) from None
    clean_orphans(path.parent)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, mode)
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
        except (OSError, RuntimeError) as exc:
            if _is_disk_full(exc):
                raise disk_full_error(path, exc.strerror or "" if isinstance(exc, OSError) else "") from None
            if isinstance(exc, OSError):
                raise write_error(path, exc) from None
            raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to `path` atomically (sorted keys, indented, so diffs stay readable)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save to `path` atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_torch_file(path: str | os.PathLike, what: str, missing_hint: str = "") -> Any:
    """torch.load with weights_only=True (no code runs from the file); errors name the file and `what` it is."""
    import pickle

    import torch

    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))
        hint = f": pass {path / inside[0]}" if len(inside) == 1 else (
            f": pass one of its files ({', '.join(inside)})" if inside else ": pass the .pt file itself")
        raise KdbenchError(f"{what} {path} is a folder, not a file{hint}")
    if not path.is_file():
        raise KdbenchError(f"{what} {path} does not exist{missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            # torch's text advises weights_only=False, which would run the file's code: never say that.
            raise KdbenchError(f"{what} {path} is not a plain weights file (it holds Python objects that could "
                               "run code when loaded), so kdbench did not load it; use a file written by kdbench "
                               "or a state_dict saved with torch.save") from None
        raise KdbenchError(f"could not read {what} {path}: {_first_line(exc)} (the file is damaged or not a "
                           "torch file)") from None
    except Exception as exc:
        raise KdbenchError(f"could not read {what} {path}: {_first_line(exc)} (the file is damaged, truncated "
                           "or not a torch file)") from None


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it becomes `path` (replacing an old one)."""
    path = Path(path)
    with translated_writes(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_orphans(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path.name), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
    try:
        with translated_writes(path):
            yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
