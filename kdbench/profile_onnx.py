"""Profile an exported ONNX model with onnxruntime alone (`kdbench profile --onnx FILE`).

Edge devices (a Jetson, a phone build) may have onnxruntime but no torch, so this module and everything it
imports must never import torch or torchvision. kdbench/profile.py reuses its torch-free helpers (timing,
onnxruntime sessions, printing and recording rows), not the other way round; device names live in
kdbench/hardware.py.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kdbench.errors import KdbenchError
from kdbench.hardware import cpu_name, device_label, gpu_name_without_torch
from kdbench.interference import MARK, Verdict, Watch

MIB = 2**20  # sizes are in MiB (2^20 bytes), the unit torchvision's model tables call "MB"
MIN_RUNS = 50
WARMUP_RUNS = 10
# Metadata keys kdbench writes into the ONNX files it exports, so a bare file still says what it is.
META_ARCH = "kdbench.arch"
META_CROP = "kdbench.crop"
JSON_FORMAT = "kdbench-profiles"


# timing -----------------------------------------------------------------------------------------------
def check_runs(runs: int) -> int:
    """Latency rests on at least MIN_RUNS timed runs; fewer give an unstable p90."""
    if runs < MIN_RUNS:
        raise KdbenchError(f"--runs {runs} is too few: use at least {MIN_RUNS} timed runs")
    return runs


def measure_latency(fn: Callable[[], Any], runs: int, warmup: int = WARMUP_RUNS,
                    sync: Callable[[], None] | None = None) -> tuple[float, float]:
    """Median and p90 wall time in ms of `fn()` over `runs` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):  # first calls pay for allocation, kernel selection and caches
        fn()
    if sync:
        sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        if sync:  # asynchronous devices: time the work, not the launch
            sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times)), float(np.percentile(times, 90))


# onnxruntime ------------------------------------------------------------------------------------------
def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise KdbenchError("onnxruntime is not installed: pip install onnxruntime (onnxruntime-gpu for "
                           "CUDA; on a Jetson, NVIDIA's wheel for your JetPack)") from None
    return onnxruntime


def ort_providers(device: str) -> tuple[list[str], str]:
    """Execution providers for `device` and the device kind they actually run on ('cuda' or 'cpu')."""
    ort = _import_ort()
    if device == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda"
        print("kdbench: warning: onnxruntime has no CUDAExecutionProvider here; measuring on the CPU instead")
    return ["CPUExecutionProvider"], "cpu"


def ort_session(path: str | os.PathLike, providers: list[str]):
    """An onnxruntime InferenceSession, with a KdbenchError naming the file when it cannot be loaded."""
    ort = _import_ort()
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise KdbenchError(f"onnxruntime could not load {path}: {exc}") from None


def input_shape(session, batch: int, crop: int) -> tuple[str, list[int]]:
    """The model's first input name and shape; symbolic dims become `batch` (first) or `crop` (others)."""
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else (batch if i == 0 else crop)
             for i, d in enumerate(inp.shape)]
    if inp.type != "tensor(float)":
        raise KdbenchError(f"the ONNX model's input {inp.name!r} is {inp.type}: kdbench measures float32 "
                           f"models")
    return inp.name, shape


def ort_latency(session, name: str, shape: list[int], runs: int) -> tuple[float, float]:
    """Median and p90 ms of one session.run on a random input (host-to-device copies included)."""
    feed = {name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    return measure_latency(lambda: session.run(None, feed), runs)


# ONNX file facts ---------------------------------------------------------------------------------------
def onnx_file_bytes(path: str | os.PathLike) -> int:
    """Size of the model file plus its external-data files (weights saved beside it), in bytes."""
    import onnx

    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    locations = {e.value for init in model.graph.initializer for e in init.external_data
                 if e.key == "location"}
    extra = [path.parent / loc for loc in locations]
    return total + sum(p.stat().st_size for p in extra if p.is_file())


def onnx_facts(path: str | os.PathLike) -> dict[str, Any]:
    """Parameter count (float initializers), kdbench metadata (arch, crop) and opset of an ONNX file."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: the file is not an ONNX protobuf
        raise KdbenchError(f"{path} is not a readable ONNX model: {exc}") from None
    tp = onnx.TensorProto
    floats = {tp.FLOAT, tp.FLOAT16, tp.DOUBLE, tp.BFLOAT16}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in floats)
    meta = {p.key: p.value for p in model.metadata_props}
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return {"params": params, "arch": meta.get(META_ARCH), "crop": meta.get(META_CROP), "opset": opset}


# rows: print, store, JSON -------------------------------------------------------------------------------
def print_rows(rows: list[dict[str, Any]]) -> None:
    """Print profile rows as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kdbench profile (sizes in MiB = 2^20 bytes; GFLOPs count a multiply-add as 2)")
    for col in ("arch", "backend", "device", "batch", "crop", "params (M)", "size MiB", "file MiB", "GFLOPs",
                "median ms", "p90 ms", "runs"):
        table.add_column(col, justify="left" if col in ("arch", "backend", "device") else "right")
    for r in rows:
        est = "≈" if r.get("estimated") else ""  # an estimate must never read as a measurement
        lat = [_fmt(r[k]) if r[k] is None else est + _fmt(r[k]) for k in ("latency_median_ms", "latency_p90_ms")]
        table.add_row(r["arch"], r["backend"], r["device"], _fmt(r["batch"], 0), _fmt(r["crop"], 0),
                      _fmt(r["params"] and r["params"] / 1e6), _fmt(r["size_mb"]), _fmt(r["file_mb"]),
                      _fmt(r["gflops"]), *lat, _fmt(r["runs"], 0))
    console = Console()
    if not console.is_terminal:  # piped or captured: rich would squeeze the table into 80 columns
        console = Console(width=200)
    console.print(table)
    for r in rows:
        if r.get("note"):
            note = f"(estimated: {r['note']})" if r.get("estimated") else r["note"]
            print(f"  {r['arch']} / {r['backend']}: {note}")
        if r.get("interference"):
            print(f"  {r['arch']} / {r['backend']}: disturbed measurement: {r['interference']}")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mark_interference(row: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    """Attach a disturbed measurement's verdict to its row (emit_rows refuses or flags it)."""
    if verdict.disturbed:
        row["interference"] = verdict.text()
    return row


def guard_interference(rows: list[dict[str, Any]], force: bool) -> list[dict[str, Any]]:
    """Rows fit to record: a disturbed one stops the command, or with --force is kept with a flagged note."""
    disturbed = [r for r in rows if r.get("interference")]
    if disturbed and not force:
        what = "; ".join(f"{r['arch']} / {r['backend']}: {r['interference']}" for r in disturbed)
        raise KdbenchError(f"the machine was busy while measuring ({what}); nothing was recorded. Measure "
                           f"again on a quiet machine, or pass --force to record it flagged as disturbed")
    out = []
    for r in rows:
        r = dict(r)
        reason = r.pop("interference", None)
        if reason:
            r["note"] = f"{MARK} ({reason}), kept with --force" + (f"; {r['note']}" if r.get("note") else "")
        out.append(r)
    return out


def emit_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Print the rows, write them as JSON with --out, and record them in the store unless --no-store.

    A measurement disturbed by other work on the machine (kdbench/interference.py) is printed but not
    recorded anywhere unless --force.
    """
    print_rows(rows)
    rows = guard_interference(rows, getattr(args, "force", False))
    if getattr(args, "out", None):
        from kdbench.fileio import write_json_atomic

        write_json_atomic(args.out, {"format": JSON_FORMAT, "version": 1, "rows": rows})
        print(f"wrote {len(rows)} rows to {args.out} (merge them elsewhere with `kdbench import {args.out}`)")
    if not getattr(args, "no_store", False):
        from kdbench.reports.store import ResultsStore

        with ResultsStore(args.runs_dir) as store:
            store.add_profiles(rows)
        print(f"recorded {len(rows)} rows in {Path(args.runs_dir) / 'results.sqlite'}")


def make_row(**fields: Any) -> dict[str, Any]:
    """A profile row with every store column present (None where not measured) and a timestamp."""
    row: dict[str, Any] = dict.fromkeys(("arch", "backend", "device", "batch", "crop", "params", "size_mb",
                                         "file_mb", "gflops", "latency_median_ms", "latency_p90_ms", "runs",
                                         "note"))
    row.update(estimated=0, source=f"kdbench profile on {socket.gethostname()}", created=time.time())
    row.update(fields)
    return row


# the command --------------------------------------------------------------------------------------------
def profile_onnx_file(path: str | os.PathLike, device: str = "cpu", batch: int = 1, crop: int = 224,
                      runs: int = MIN_RUNS) -> dict[str, Any]:
    """Measure one ONNX file with onnxruntime: params, sizes, latency; FLOPs stay empty (they need torch)."""
    path = Path(path)
    if not path.is_file():
        raise KdbenchError(f"ONNX file {path} does not exist: export a trained model with `kdbench export`, or "
                           f"random weights with `kdbench profile --export DIR`")
    check_runs(runs)
    facts = onnx_facts(path)
    providers, kind = ort_providers(device)
    session = ort_session(path, providers)
    name, shape = input_shape(session, batch, crop)
    with Watch() as watch:
        median, p90 = ort_latency(session, name, shape, runs)
    dev = gpu_name_without_torch() if kind == "cuda" else cpu_name()
    crop_hw = shape[-1] if len(shape) == 4 else None
    row = make_row(arch=facts["arch"] or path.stem, backend="onnxruntime", device=device_label(dev, kind),
                   batch=shape[0], crop=crop_hw, params=facts["params"], size_mb=facts["params"] * 4 / MIB,
                   file_mb=onnx_file_bytes(path) / MIB, latency_median_ms=median, latency_p90_ms=p90,
                   runs=runs,
                   note=f"{path.name}, input {shape}: params from ONNX initializers (BatchNorm may be "
                        f"folded away); FLOPs need torch, left empty")
    return mark_interference(row, watch.verdict(median, p90))


def cmd_profile_onnx(args: argparse.Namespace) -> int:
    """`kdbench profile --onnx FILE`: onnxruntime only, no torch import."""
    row = profile_onnx_file(args.onnx, device=args.device, batch=args.batch, crop=args.crop, runs=args.runs)
    emit_rows([row], args)
    return 0

