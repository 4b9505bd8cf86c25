"""Scene downloads against a local HTTP server on 127.0.0.1: resume, verification, safe unpacking."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import re
import socket
import stat
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdbench.errors import KdbenchError
from kdbench.scenes import download
from kdbench.scenes.catalog import get_scene, is_on_disk
from kdbench.scenes.download import download_scene, fetch
from kdbench.scenes.readers import read_split

SHOP = get_scene("ShopFacade")
HEADS = get_scene("Heads")


# ---------------------------------------------------------------- local server


class FileServer:
    """Serves `files` by name with Range support; can cut transfers, ignore Range, or stall."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        self.cut_after = 0  # bytes of body sent before a cut
        self.cuts_left = 0  # how many responses to cut
        self.ignore_range = False
        self.stall_s = 0.0
        self.httpd = _QuietServer(("127.0.0.1", 0), _handler_for(self))
        # a short poll interval: shutdown() waits up to one interval
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{name}"

    @staticmethod
    def etag(data: bytes) -> str:
        return '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # a client that hung up on a stall
        pass


def _handler_for(state: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            state.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                   "if_range": self.headers.get("If-Range"),
                                   "user_agent": self.headers.get("User-Agent")})
            if state.stall_s:
                time.sleep(state.stall_s)
            data = state.files.get(self.path.lstrip("/"))
            if data is None:
                self.send_error(404)
                return
            start = self._range_start(data)
            if start is not None and start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200 if start is None else 206)
            if start is not None:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start or 0:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", FileServer.etag(data))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if state.cuts_left > 0:
                state.cuts_left -= 1
                body = body[:state.cut_after]
                self.close_connection = True  # the client sees the connection end early
            self.wfile.write(body)

        def _range_start(self, data: bytes) -> int | None:
            rng = self.headers.get("Range")
            if not rng or state.ignore_range:
                return None
            if_range = self.headers.get("If-Range")
            if if_range and if_range != FileServer.etag(data):
                return None  # the file changed: RFC 9110 says send all of it
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            return int(m.group(1)) if m else None

    return Handler


@pytest.fixture
def server():
    srv = FileServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_retry_wait(monkeypatch):
    monkeypatch.setattr(download, "RETRY_WAIT_S", 0.0)


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "datasets"


# ---------------------------------------------------------------- tiny scene archives


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write(zf: zipfile.ZipFile, extra: list) -> None:
    for name, data in extra:
        zf.writestr(name, data)


def cambridge_zip(path: Path, top: str = "ShopFacade/", extra: list = (), drop: str = "") -> bytes:
    """A ShopFacade-like zip: train from seq2 (3 frames), test from seq1 and seq3 (1 frame each)."""
    with zipfile.ZipFile(path, "w") as zf:
        for split, frames in (("train", [(2, 1), (2, 2), (2, 3)]), ("test", [(1, 1), (3, 1)])):
            lines = ["Visual Landmark Dataset V1", "ImageFile, Camera Position [X Y Z W P Q R]", ""]
            for seq, i in frames:
                rel = f"seq{seq}/frame{i:05d}.png"
                zf.writestr(top + rel, _png(seq * 10 + i))
                lines.append(f"{rel} {seq:.3f} {i:.3f} 1.5 0.7071068 0.7071068 0.0 0.0")
            if drop != f"dataset_{split}.txt":
                zf.writestr(top + f"dataset_{split}.txt", "\n".join(lines) + "\n")
        _write(zf, extra)
    return path.read_bytes()


def _pose_text(i: int) -> str:
    a = 0.3 * (i + 1)
    c, s = math.cos(a), math.sin(a)
    m = [[c, -s, 0, 0.1 * i], [s, c, 0, 0.2], [0, 0, 1, 1.5], [0, 0, 0, 1]]
    return "".join("\t".join(f"{v:e}" for v in row) + "\t\r\n" for row in m)


def _seq_zip(seq: int, inside: bool, extra: list) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        folder = f"seq-{seq:02d}/" if inside else ""
        for i in range(2):
            zf.writestr(f"{folder}frame-{i:06d}.color.png", _png(100 * seq + i))
            zf.writestr(f"{folder}frame-{i:06d}.pose.txt", _pose_text(i))
        zf.writestr(f"{folder}Thumbs.db", b"thumbnail cache")
        _write(zf, extra)
    return buf.getvalue()


def seven_scenes_zip(path: Path, top: str = "heads/", nested_inside: bool = True,
                     nested_extra: list = ()) -> bytes:
    """A heads-like zip: nested seq-01.zip / seq-02.zip, CRLF split files, Thumbs.db."""
    with zipfile.ZipFile(path, "w") as zf:
        for seq in (1, 2):
            inner = _seq_zip(seq, nested_inside, nested_extra if seq == 1 else ())
            zf.writestr(f"{top}seq-{seq:02d}.zip", inner)
        zf.writestr(f"{top}TrainSplit.txt", "sequence2\r\n")
        zf.writestr(f"{top}TestSplit.txt", "sequence1\r\n")
        zf.writestr(f"{top}Thumbs.db", b"thumbnail cache")
    return path.read_bytes()


def _serve(server: FileServer, name: str, data: bytes) -> str:
    server.files[name] = data
    return server.url(name)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def _assert_no_leftovers(root: Path, spec) -> None:
    """Not ready, no scene folder, and nothing left in .downloads."""
    assert not is_on_disk(spec, root)
    assert not (root / spec.folder).exists()
    left = {p.name for p in (root / ".downloads").iterdir()} if (root / ".downloads").exists() else set()
    assert not left


# ---------------------------------------------------------------- full downloads, both layouts


@pytest.mark.parametrize("top", ["ShopFacade/", ""], ids=["top-folder", "flat"])
def test_cambridge_download(server, root, tmp_path, top):
    data = cambridge_zip(tmp_path / "shop.zip", top=top, extra=[(f"{top}reconstruction.nvm", b"nvm")])
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data), zip_bytes=len(data),
                               sha256=_sha(data))
    path = download_scene(spec, root, quiet=True)
    assert path == root.resolve() / "ShopFacade" and is_on_disk(spec, root)
    train, test = read_split(path, spec, "train"), read_split(path, spec, "test")
    assert [f.image_path.name for f in train] == ["frame00001.png", "frame00002.png", "frame00003.png"]
    assert len(test) == 2 and np.allclose(train[1].pose[:3], [2, 2, 1.5])
    frames = {f"seq{s}/frame{i:05d}.png" for s, i in ((2, 1), (2, 2), (2, 3), (1, 1), (3, 1))}
    assert {p.relative_to(path).as_posix() for p in _tree(path)} == {"dataset_train.txt", "dataset_test.txt"} | frames
    assert not (path / "reconstruction.nvm").exists()  # not part of the layout: left in the zip
    assert not list((root / ".downloads").iterdir())  # zip, metadata and lock are gone
    assert len(server.requests) == 1 and server.requests[0]["user_agent"].startswith("kdbench/")


@pytest.mark.parametrize("top,nested_inside", [("heads/", True), ("heads/", False), ("", True)],
                         ids=["real-layout", "flat-nested", "flat-outer"])
def test_7scenes_download_unpacks_nested_zips(server, root, tmp_path, capsys, top, nested_inside):
    data = seven_scenes_zip(tmp_path / "heads.zip", top=top, nested_inside=nested_inside)
    spec = dataclasses.replace(HEADS, url=_serve(server, "heads.zip", data))
    path = download_scene(spec, root, quiet=False)
    assert path == root.resolve() / "heads"
    files = {p.relative_to(path).as_posix() for p in _tree(path)}
    kinds = ("color.png", "pose.txt")
    frames = {f"seq-{s:02d}/frame-{i:06d}.{k}" for s in (1, 2) for i in (0, 1) for k in kinds}
    assert files == {"TrainSplit.txt", "TestSplit.txt"} | frames  # nested zips and Thumbs.db are gone
    train, test = read_split(path, spec, "train"), read_split(path, spec, "test")
    assert all("seq-02" in str(f.image_path) for f in train)
    assert all("seq-01" in str(f.image_path) for f in test)
    a = 0.3
    assert np.allclose(test[0].pose, [0, 0.2, 1.5, math.cos(a / 2), 0, 0, math.sin(a / 2)], atol=1e-6)
    err = capsys.readouterr().err
    assert "is ready in" in err and "sha256" in err  # no checksum in the catalog: printed for recording


# ---------------------------------------------------------------- interrupted transfers and resume


def test_cut_transfer_resumes_with_range_in_the_same_run(server, root, tmp_path):
    data = cambridge_zip(tmp_path / "shop.zip")
    cut = len(data) // 3
    server.cut_after, server.cuts_left = cut, 1
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data), zip_bytes=len(data),
                               sha256=_sha(data))  # the sha256 check proves the bytes are identical
    download_scene(spec, root, quiet=True)
    first, second = server.requests
    assert first["range"] is None
    assert second["range"] == f"bytes={cut}-" and second["if_range"] == FileServer.etag(data)
    assert len(read_split(root / "ShopFacade", spec, "train")) == 3


def test_interrupted_run_keeps_part_and_next_run_resumes(server, root, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "ATTEMPTS", 1)
    data = cambridge_zip(tmp_path / "shop.zip")
    cut = len(data) // 2
    server.cut_after, server.cuts_left = cut, 1
    url = _serve(server, "ShopFacade.zip", data)
    spec = dataclasses.replace(SHOP, url=url, zip_bytes=len(data), sha256=_sha(data))
    with pytest.raises(KdbenchError, match="interrupted") as info:
        download_scene(spec, root, quiet=True)
    assert url in str(info.value) and "--url" in str(info.value)
    part = root / ".downloads" / "ShopFacade.zip.part"
    assert part.read_bytes() == data[:cut]
    assert not is_on_disk(spec, root) and not (root / "ShopFacade").exists()

    download_scene(spec, root, quiet=True)
    assert server.requests[-1]["range"] == f"bytes={cut}-"
    assert is_on_disk(spec, root) and not part.exists()


def test_fetch_resume_gives_identical_bytes(server, tmp_path):
    data = os.urandom(3 * download.CHUNK_BYTES + 12345)  # several chunks
    server.cut_after, server.cuts_left = download.CHUNK_BYTES + 7, 2
    url = _serve(server, "blob.bin", data)
    dest = fetch(url, tmp_path / "blob.bin", quiet=True, expected_bytes=len(data))
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.requests] == [None, f"bytes={download.CHUNK_BYTES + 7}-",
                                                     f"bytes={2 * (download.CHUNK_BYTES + 7)}-"]
    assert not (tmp_path / "blob.bin.part").exists()


def test_server_ignoring_range_starts_over(server, root, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "ATTEMPTS", 1)
    data = cambridge_zip(tmp_path / "shop.zip")
    server.cut_after, server.cuts_left = len(data) // 2, 1
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data), zip_bytes=len(data),
                               sha256=_sha(data))
    with pytest.raises(KdbenchError):
        download_scene(spec, root, quiet=True)
    server.ignore_range = True
    download_scene(spec, root, quiet=True)
    assert server.requests[-1]["range"] == f"bytes={len(data) // 2}-"  # asked, but got a 200
    assert is_on_disk(spec, root)


def test_changed_file_on_server_restarts_through_if_range(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "ATTEMPTS", 1)
    old, new = os.urandom(5000), os.urandom(6000)
    url = _serve(server, "blob.bin", old)
    server.cut_after, server.cuts_left = 2000, 1
    with pytest.raises(KdbenchError):
        fetch(url, tmp_path / "blob.bin", quiet=True)
    server.files["blob.bin"] = new
    assert fetch(url, tmp_path / "blob.bin", quiet=True).read_bytes() == new


def test_whole_part_is_completed_by_a_416(server, tmp_path):
    data = os.urandom(4000)
    url = _serve(server, "blob.bin", data)
    dest = fetch(url, tmp_path / "blob.bin", quiet=True)
    os.replace(dest, tmp_path / "blob.bin.part")  # as if killed between the last byte and the rename
    assert fetch(url, dest, quiet=True).read_bytes() == data
    assert server.requests[-1]["range"] == "bytes=4000-"


def test_part_from_another_url_is_not_resumed(server, root, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "ATTEMPTS", 1)
    data = cambridge_zip(tmp_path / "shop.zip")
    server.cut_after, server.cuts_left = len(data) // 2, 1
    spec = dataclasses.replace(SHOP, url=_serve(server, "a.zip", data))
    with pytest.raises(KdbenchError):
        download_scene(spec, root, quiet=True)
    download_scene(spec, root, url=_serve(server, "b.zip", data), quiet=True)
    assert server.requests[-1] == {**server.requests[-1], "path": "/b.zip", "range": None}
    assert is_on_disk(spec, root)


# ---------------------------------------------------------------- verification


def test_size_mismatch_is_refused_and_removed(server, root, tmp_path):
    data = cambridge_zip(tmp_path / "shop.zip")
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data), zip_bytes=len(data) + 10)
    with pytest.raises(KdbenchError, match="size mismatch") as info:
        download_scene(spec, root, quiet=True)
    assert f"expected {len(data) + 10} bytes" in str(info.value) and str(len(data)) in str(info.value)
    _assert_no_leftovers(root, spec)


def test_size_mismatch_of_a_local_zip_keeps_the_users_file(root, tmp_path):
    zip_path = tmp_path / "shop.zip"
    data = cambridge_zip(zip_path)
    spec = dataclasses.replace(SHOP, zip_bytes=len(data) - 1)
    with pytest.raises(KdbenchError, match=f"expected {len(data) - 1} bytes, got {len(data)}"):
        download_scene(spec, root, url=str(zip_path), quiet=True)
    assert zip_path.read_bytes() == data and not is_on_disk(spec, root)


def test_sha256_mismatch_is_refused_and_removed(server, root, tmp_path):
    data = cambridge_zip(tmp_path / "shop.zip")
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data), zip_bytes=len(data),
                               sha256="0" * 64)
    with pytest.raises(KdbenchError, match="sha256 mismatch") as info:
        download_scene(spec, root, quiet=True)
    assert _sha(data) in str(info.value) and "removed" in str(info.value)
    _assert_no_leftovers(root, spec)


def test_error_page_instead_of_zip(server, root):
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", b"<html>please log in</html>"))
    with pytest.raises(KdbenchError, match="not a valid zip archive"):
        download_scene(spec, root, quiet=True)
    _assert_no_leftovers(root, spec)


def test_zip_without_split_files(server, root, tmp_path):
    data = cambridge_zip(tmp_path / "shop.zip", drop="dataset_train.txt")
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data))
    with pytest.raises(KdbenchError, match="holds no dataset_train.txt"):
        download_scene(spec, root, quiet=True)
    _assert_no_leftovers(root, spec)


def test_incomplete_scene_is_not_moved_into_place(server, root, tmp_path):
    data = cambridge_zip(tmp_path / "shop.zip", drop="dataset_test.txt")
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data))
    with pytest.raises(KdbenchError, match="did not unpack to a complete ShopFacade scene"):
        download_scene(spec, root, quiet=True)
    _assert_no_leftovers(root, spec)


def test_disk_full_keeps_the_finished_download(server, root, tmp_path, monkeypatch):
    data = cambridge_zip(tmp_path / "shop.zip")
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data))
    real_usage = download.shutil.disk_usage
    monkeypatch.setattr(download.shutil, "disk_usage", lambda p: real_usage(p)._replace(free=10))
    with pytest.raises(KdbenchError, match="free some space"):
        download_scene(spec, root, quiet=True)
    assert (root / ".downloads" / "ShopFacade.zip").read_bytes() == data
    assert not is_on_disk(spec, root) and not (root / "ShopFacade").exists()
    monkeypatch.setattr(download.shutil, "disk_usage", real_usage)
    download_scene(spec, root, quiet=True)
    assert is_on_disk(spec, root) and len(server.requests) == 1  # unpacked from the kept zip


# ---------------------------------------------------------------- unsafe archives


def test_unlisted_junk_is_not_unpacked(server, root, tmp_path, capsys):
    junk = b"\0" * (8 << 20)
    data = cambridge_zip(tmp_path / "shop.zip", extra=[("ShopFacade/junk/fill.bin", junk),
                                                       ("ShopFacade/seq2/unlisted.png", _png(7)),
                                                       ("ShopFacade/video.mp4", b"mp4" * 1000)])
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data))
    path = download_scene(spec, root, quiet=False)
    assert not (path / "junk").exists() and not (path / "seq2" / "unlisted.png").exists()
    assert not (path / "video.mp4").exists()
    assert sum(p.stat().st_size for p in _tree(root)) < 1 << 20  # nothing of the 8 MB landed anywhere
    assert "left 3 file(s) in the archive" in capsys.readouterr().err


def test_7scenes_depth_maps_and_unlisted_sequences_stay_in_the_zip(server, root, tmp_path):
    data = seven_scenes_zip(tmp_path / "heads.zip", nested_extra=[("seq-01/frame-000000.depth.png", _png(3))])
    with zipfile.ZipFile(tmp_path / "heads.zip", "a") as zf:
        zf.writestr("heads/seq-07.zip", _seq_zip(7, True, ()))  # listed in no split file
        zf.writestr("heads/seq-07/frame-000000.color.png", _png(4))
    data = (tmp_path / "heads.zip").read_bytes()
    spec = dataclasses.replace(HEADS, url=_serve(server, "heads.zip", data))
    path = download_scene(spec, root, quiet=True)
    names = {p.relative_to(path).as_posix() for p in _tree(path)}
    assert not any("depth" in n or "seq-07" in n for n in names)
    assert len(read_split(path, spec, "train")) == 2 and len(read_split(path, spec, "test")) == 2


def test_zip_bomb_member_is_refused(server, root, tmp_path):
    bomb = b"\0" * (8 << 20)
    with zipfile.ZipFile(tmp_path / "shop.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "test"):
            zf.writestr(f"ShopFacade/dataset_{split}.txt", "h\nh\n\nseq1/frame00001.png 1 2 3 1 0 0 0\n"
                        if split == "train" else "h\nh\n\nseq3/frame00001.png 1 2 3 1 0 0 0\n")
        zf.writestr("ShopFacade/seq1/frame00001.png", bomb)  # listed, but expands 1000-fold
        zf.writestr("ShopFacade/seq3/frame00001.png", _png(1))
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", (tmp_path / "shop.zip").read_bytes()))
    with pytest.raises(KdbenchError, match=r"refusing to unpack .*seq1/frame00001.png.*zip bomb"):
        download_scene(spec, root, quiet=True)
    _assert_no_leftovers(root, spec)


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("ShopFacade/seq2/link.png")
    info.create_system = 3  # Unix: the mode sits in the high bits of external_attr
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("member", ["../evil.txt", "ShopFacade/../../evil.txt", "..\\evil.txt", "ABSOLUTE",
                                    "SYMLINK"])
def test_unsafe_members_are_refused(server, root, tmp_path, member):
    if member == "ABSOLUTE":
        member = str(tmp_path / "evil.txt")
    name = _symlink_member() if member == "SYMLINK" else member
    data = cambridge_zip(tmp_path / "shop.zip", extra=[(name, b"../../evil.txt")])
    if member != "SYMLINK":
        assert member in zipfile.ZipFile(io.BytesIO(data)).namelist()  # zipfile kept the name as given
    url = _serve(server, "ShopFacade.zip", data)
    spec = dataclasses.replace(SHOP, url=url)
    before = _tree(tmp_path)
    with pytest.raises(KdbenchError, match="refusing to unpack") as info:
        download_scene(spec, root, quiet=True)
    shown = "ShopFacade/seq2/link.png" if member == "SYMLINK" else member
    assert repr(shown) in str(info.value) and url in str(info.value)
    assert _tree(tmp_path) - before <= {root / ".kdbench-locks" / "ShopFacade.lock"}
    assert not list(tmp_path.rglob("evil*"))
    _assert_no_leftovers(root, spec)


def test_escaping_member_in_nested_zip_is_refused(server, root, tmp_path):
    data = seven_scenes_zip(tmp_path / "heads.zip", nested_extra=[("../../evil.txt", b"x")])
    spec = dataclasses.replace(HEADS, url=_serve(server, "heads.zip", data))
    before = _tree(tmp_path)
    with pytest.raises(KdbenchError, match="refusing to unpack seq-01.zip inside") as info:
        download_scene(spec, root, quiet=True)
    assert "'../../evil.txt'" in str(info.value)
    assert _tree(tmp_path) - before <= {root / ".kdbench-locks" / "heads.lock"}
    assert not list(tmp_path.rglob("evil*"))
    _assert_no_leftovers(root, spec)


# ---------------------------------------------------------------- network errors


def test_404_names_the_url(server, root):
    url = server.url("nothing-here.zip")
    with pytest.raises(KdbenchError, match="HTTP 404") as info:
        download_scene(dataclasses.replace(SHOP, url=url), root, quiet=True)
    assert url in str(info.value) and "--url" in str(info.value)


def test_connection_refused_names_the_url(root):
    with socket.socket() as s:  # a port that nothing listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/ShopFacade.zip"
    with pytest.raises(KdbenchError, match="cannot download") as info:
        download_scene(SHOP, root, url=url, quiet=True)
    assert url in str(info.value) and "rerun" in str(info.value)


def test_timeout_names_the_url(server, root, monkeypatch):
    monkeypatch.setattr(download, "TIMEOUT_S", 0.2)
    server.stall_s = 0.8
    url = _serve(server, "ShopFacade.zip", b"late")
    with pytest.raises(KdbenchError, match="timed out") as info:
        download_scene(SHOP, root, url=url, quiet=True)
    assert url in str(info.value)


# ---------------------------------------------------------------- already there, local zips, CLI


def test_scene_on_disk_is_not_downloaded_again(server, root, tmp_path, capsys):
    data = cambridge_zip(tmp_path / "shop.zip")
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", data))
    first = download_scene(spec, root, quiet=True)
    capsys.readouterr()
    assert download_scene(spec, root, quiet=True) == first
    assert len(server.requests) == 1
    assert "already on disk" in capsys.readouterr().err


def test_foreign_folder_in_the_way_is_left_alone(server, root, tmp_path):
    (root / "ShopFacade").mkdir(parents=True)
    (root / "ShopFacade" / "notes.txt").write_text("mine")
    spec = dataclasses.replace(SHOP, url=_serve(server, "ShopFacade.zip", cambridge_zip(tmp_path / "s.zip")))
    with pytest.raises(KdbenchError, match="exists but is not a complete ShopFacade scene"):
        download_scene(spec, root, quiet=True)
    assert (root / "ShopFacade" / "notes.txt").read_text() == "mine" and not server.requests


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_local_zip_via_url(root, tmp_path, as_uri):
    zip_path = tmp_path / "heads.zip"
    data = seven_scenes_zip(zip_path)
    download_scene("heads", root, url=zip_path.as_uri() if as_uri else str(zip_path), quiet=True)
    assert is_on_disk(HEADS, root) and zip_path.read_bytes() == data  # the user's zip is kept


def test_cli_download_and_prepare(server, root, tmp_path):
    pytest.importorskip("kdbench.scenes.cache")
    from kdbench.cli import main
    from kdbench.scenes.cache import prepared_sizes

    url = _serve(server, "ShopFacade.zip", cambridge_zip(tmp_path / "shop.zip"))
    args = ["scenes", "download", "ShopFacade", "--data-root", str(root), "--url", url, "--quiet"]
    assert main(args) == 0
    assert is_on_disk("ShopFacade", root) and prepared_sizes(root / "ShopFacade")
    assert main(args) == 0 and len(server.requests) == 1


def test_cli_download_error_exits_2(server, root, capsys):
    pytest.importorskip("kdbench.scenes.cache")
    from kdbench.cli import main

    url = server.url("missing.zip")
    assert main(["scenes", "download", "ShopFacade", "--data-root", str(root), "--url", url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdbench: error:") and url in err and "Traceback" not in err
