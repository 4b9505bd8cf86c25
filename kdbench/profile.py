"""Efficiency of PoseNet architectures: params, size, FLOPs, latency on torch and onnxruntime, ONNX export.

Conventions (also printed with the table):
- size MiB = params * 4 bytes / 2^20 (fp32 weights, the unit torchvision's tables call "MB"); file MiB is the
  saved state_dict (torch backend) or the .onnx file (onnxruntime backend).
- GFLOPs come from torch.utils.flop_counter.FlopCounterMode at batch 1 and the crop size: it counts a
  multiply-add as 2 FLOPs and counts convolutions and matrix products only (BatchNorm, ReLU, pooling: 0).
- Latency: model.eval(), torch.inference_mode, fp32, warm-up runs first, then at least 50 timed runs of one
  batch; median and p90 in ms. CUDA timings synchronise after every run. A measurement disturbed by other
  work on the machine is printed but not recorded without --force (kdbench/interference.py says how it is told).
- Exported files (--export) hold random weights, for latency; `kdbench export` (kdbench/export.py) exports
  trained models.
- On CUDA, torch is also measured with the model and input cast to fp16 and to bf16 (backends `torch-fp16`,
  `torch-bf16`; fp16 is what a Jetson runs), and onnxruntime with its TensorRT execution provider
  (`onnxruntime-tensorrt`, fp16 enabled) when that provider is installed, beside the CUDA provider's row.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdbench.errors import KdbenchError
from kdbench.hardware import cpu_name, device_label
from kdbench.interference import Watch
from kdbench.models import PoseNet, check_arch, parse_archs
from kdbench.profile_onnx import (
    META_ARCH,
    META_CROP,
    MIB,
    check_runs,
    emit_rows,
    input_shape,
    make_row,
    mark_interference,
    measure_latency,
    ort_latency,
    ort_providers,
    ort_session,
)

BACKENDS = ("torch", "onnxruntime")
PARITY_ATOL = 1e-4


class PoseOnly(nn.Module):
    """PoseNet without the feature dict: forward returns (xyz, q), the two outputs an exported model has."""

    def __init__(self, model: PoseNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out.xyz, out.q


# static facts -----------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    """Number of parameters (sum of numel over model.parameters(); buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def params_mib(params: int) -> float:
    """fp32 weight size in MiB: params * 4 bytes / 2^20."""
    return params * 4 / MIB


def state_dict_mib(model: nn.Module) -> float:
    """Size in MiB of the state_dict saved by torch.save (BN buffers and pickle overhead included)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth"
        torch.save(model.state_dict(), path)
        return path.stat().st_size / MIB


def count_gflops(model: nn.Module, crop: int) -> float:
    """GFLOPs of one forward pass at batch 1 and crop x crop (FlopCounterMode: a multiply-add is 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, 3, crop, crop, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def torch_device_name(device: str) -> str:
    """'NVIDIA H100 80GB HBM3 (cuda)', 'AMD EPYC (cpu)'; a Jetson reports its board name."""
    if device == "cuda":
        return device_label(torch.cuda.get_device_name(0), "cuda")
    return device_label(cpu_name(), "cpu")


def tame_random_weights(model: PoseNet, crop: int, damping: float = 0.3) -> PoseNet:
    """Give random weights trained-like numerics: damped residual branches, calibrated BatchNorm statistics.

    (Residual damping applies to ResNet blocks; other families get the BatchNorm calibration only.)
    A freshly initialised 100-layer ResNet is chaotic: it amplifies the last-bit differences between two
    correct runtimes (torch vs onnxruntime) past 1e-4, so the parity check could not tell a correct export from
    a wrong one. Scaling each block's last BatchNorm by `damping` and estimating the BatchNorm statistics on a
    few random batches keeps activations O(1) and the net non-chaotic; latency, size and FLOPs do not change.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, (BasicBlock, Bottleneck)):
                last = block.bn3 if isinstance(block, Bottleneck) else block.bn2
                last.weight.mul_(damping)
        norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [bn.momentum for bn in norms]  # the family's own (mobilenet_v3 0.01, mnasnet 0.0003)
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            model(torch.randn(4, 3, crop, crop, generator=gen))
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
    return model.eval()


# measurements -----------------------------------------------------------------------------------------
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_precisions(device: str) -> tuple[str, ...]:
    """Precisions torch is measured in: fp32 everywhere, also fp16 and bf16 on CUDA."""
    return ("fp32", "fp16", "bf16") if device == "cuda" else ("fp32",)


def torch_latency(model: nn.Module, device: str, batch: int, crop: int, runs: int,
                  precision: str = "fp32") -> tuple[float, float]:
    """Median and p90 ms of one forward pass of a (batch, 3, crop, crop) input already on `device`.

    fp16/bf16 cast a copy of the model and the input (what an inference engine on the device runs).
    """
    dtype = TORCH_DTYPES[precision]
    model = model.to(device).eval()
    if dtype != torch.float32:
        import copy

        model = copy.deepcopy(model).to(dtype)
    x = torch.randn(batch, 3, crop, crop, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else None
    with torch.inference_mode():
        return measure_latency(lambda: model(x), runs, sync=sync)


def export_onnx(model: PoseNet, path: str | os.PathLike, batch: int = 1, crop: int = 224,
                metadata: dict[str, str] | None = None, exporter: str = "auto") -> Path:
    """Export PoseNet (outputs xyz, q; input 'image' of static shape) to one self-contained .onnx file.

    `metadata` adds string properties to the file (kdbench.arch and kdbench.crop are always written).
    `exporter`: auto (torch.export-based when onnxscript is installed, else TorchScript) or torchscript
    (the older exporter, about 20x faster on a small model: the family tests use it).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = PoseOnly(model.cpu()).eval()  # eval() on the wrapper: exporters restore the wrapper's mode
    x = torch.zeros(batch, 3, crop, crop)
    # The torch.export-based exporter needs onnxscript; without it fall back to the TorchScript one.
    dynamo = exporter == "auto" and importlib.util.find_spec("onnxscript") is not None
    kwargs: dict[str, Any] = {"external_data": False} if dynamo else {}
    try:
        torch.onnx.export(wrapper, (x,), str(path), input_names=["image"], output_names=["xyz", "q"],
                          dynamo=dynamo, verbose=False, **kwargs)
    except Exception as exc:  # exporter errors come in many types; name the model and the fix
        raise KdbenchError(f"ONNX export of {model.arch} to {path} failed ({type(exc).__name__}: {exc}); "
                           f"try `pip install onnxscript` or another torch version") from None
    proto = onnx.load(str(path))
    for key, value in {META_ARCH: model.arch, META_CROP: str(crop), **(metadata or {})}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    return path


def check_onnx_parity(model: PoseNet, path: str | os.PathLike, batch: int = 1, crop: int = 224,
                      atol: float = PARITY_ATOL) -> float:
    """Run torch and onnxruntime (CPU) on one random input; raise unless both outputs agree within atol."""
    model = model.cpu().eval()
    x = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = model(x)
    session = ort_session(path, ["CPUExecutionProvider"])
    xyz, q = session.run(["xyz", "q"], {session.get_inputs()[0].name: x.numpy()})
    diffs = {"xyz": float(abs(xyz - out.xyz.numpy()).max()), "q": float(abs(q - out.q.numpy()).max())}
    worst = max(diffs.values())
    if not worst <= atol:  # `not <=` also catches NaN
        raise KdbenchError(f"onnxruntime's outputs of {path} differ from torch's by more than {atol}: "
                           f"max |diff| xyz {diffs['xyz']:.2e}, q {diffs['q']:.2e}; the export is wrong, "
                           f"do not use it")
    return worst


def profile_arch(arch: str, backends: tuple[str, ...] = BACKENDS, device: str = "cpu", batch: int = 1,
                 crop: int = 224, runs: int = 50, export_dir: str | os.PathLike | None = None) -> list[dict]:
    """Profile rows (one per backend) for a PoseNet of `arch` with random weights (latency ignores values)."""
    torch.manual_seed(0)
    model = tame_random_weights(PoseNet(arch), crop)
    params = count_params(model)
    common = {"arch": arch, "batch": batch, "crop": crop, "params": params, "size_mb": params_mib(params),
              "gflops": count_gflops(model, crop), "runs": runs}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        if "onnxruntime" in backends or export_dir:
            onnx_path = export_onnx(model, Path(export_dir or tmp) / f"posenet-{arch}-b{batch}-c{crop}.onnx",
                                    batch, crop)
            diff = check_onnx_parity(model, onnx_path, batch, crop)
            if export_dir:
                print(f"wrote {onnx_path} ({arch} with random weights, input {batch}x3x{crop}x{crop}; "
                      f"max |torch - onnxruntime| {diff:.1e})")
        if "torch" in backends:
            for precision in torch_precisions(device):
                with Watch() as watch:
                    median, p90 = torch_latency(model, device, batch, crop, runs, precision)
                row = make_row(**common, backend="torch" if precision == "fp32" else f"torch-{precision}",
                               device=torch_device_name(device),
                               file_mb=state_dict_mib(model) * (0.5 if precision != "fp32" else 1.0),
                               latency_median_ms=median, latency_p90_ms=p90,
                               note=f"{precision}, torch {torch.__version__}, {torch.get_num_threads()} threads")
                rows.append(mark_interference(row, watch.verdict(median, p90)))
        if "onnxruntime" in backends:
            rows.append(_ort_row(common, onnx_path, device, diff))
            if device == "cuda" and "TensorrtExecutionProvider" in _ort_available():
                rows.append(_ort_row(common, onnx_path, device, diff, tensorrt=True))
    return rows


def _ort_available() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def _ort_row(common: dict[str, Any], onnx_path: Path, device: str, diff: float,
             tensorrt: bool = False) -> dict[str, Any]:
    import onnxruntime

    providers, kind = ort_providers(device)
    if tensorrt:  # TensorRT builds an fp16 engine, as on a Jetson; CUDA runs what TensorRT cannot
        providers = [("TensorrtExecutionProvider", {"trt_fp16_enable": True})] + providers
    session = ort_session(onnx_path, providers)
    name, shape = input_shape(session, common["batch"], common["crop"])
    with Watch() as watch:
        median, p90 = ort_latency(session, name, shape, common["runs"])
    dev = torch_device_name(kind)
    provider = "TensorrtExecutionProvider (fp16)" if tensorrt else providers[0]
    row = make_row(**common, backend="onnxruntime-tensorrt" if tensorrt else "onnxruntime", device=dev,
                   file_mb=onnx_path.stat().st_size / MIB, latency_median_ms=median, latency_p90_ms=p90,
                   note=f"{'fp16' if tensorrt else 'fp32'}, onnxruntime {onnxruntime.__version__} {provider}, "
                        f"max abs diff from torch {diff:.1e}")
    return mark_interference(row, watch.verdict(median, p90))


# estimates for a device that is not here ---------------------------------------------------------------------
# Published batch-1, 224x224, FP16 latency (ms) of torchvision's ResNet classifiers on a Jetson Nano, from the
# torch2trt benchmarks (DATASETS.md): backend -> arch -> ms.
JETSON_NANO_MS = {"torch-fp16": {"resnet18": 34.7, "resnet34": 64.8, "resnet50": 81.7},
                  "tensorrt-fp16": {"resnet18": 11.4, "resnet34": 20.2, "resnet50": 29.8}}
JETSON_NANO = "NVIDIA Jetson Nano (cuda)"


def jetson_nano_estimates(archs: tuple[str, ...] = ("resnet18", "resnet34", "resnet50"),
                          crop: int = 224) -> list[dict]:
    """Rows with estimated=1: published Jetson Nano figures scaled by the PoseNet/ResNet GFLOPs ratio."""
    from torchvision import models as tvm

    rows = []
    for arch in archs:
        if arch not in JETSON_NANO_MS["tensorrt-fp16"]:
            continue  # no published figure to scale from: no estimate rather than an extrapolation
        model = PoseNet(arch).eval()
        params, gflops = count_params(model), count_gflops(model, crop)
        ratio = gflops / count_gflops(tvm.get_model(arch, weights=None).eval(), 224)
        for backend, table in JETSON_NANO_MS.items():
            ms = table[arch] * ratio
            rows.append(make_row(arch=arch, backend=backend, device=JETSON_NANO, batch=1, crop=crop,
                                 params=params, size_mb=params_mib(params), gflops=gflops, latency_median_ms=ms,
                                 estimated=1, source="kdbench.profile.jetson_nano_estimates",
                                 note=f"published torch2trt {backend} figure for torchvision {arch} at 224 "
                                      f"({table[arch]} ms) x PoseNet/ResNet GFLOPs ratio {ratio:.3f}; "
                                      f"not measured"))
    return rows


# the command --------------------------------------------------------------------------------------------
def parse_names(text: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
    """Split a comma-separated option and check every name against `known`."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        given = ", ".join(map(repr, bad)) or "(none given)"
        raise KdbenchError(f"unknown {what} {given}: use {', '.join(known)}")
    return names


def check_options(args: argparse.Namespace) -> None:
    """Reject option values that would give meaningless numbers."""
    check_runs(args.runs)
    if args.batch < 1:
        raise KdbenchError(f"--batch {args.batch}: use 1 or more")
    if args.crop < 32:
        raise KdbenchError(f"--crop {args.crop}: ResNets downsample by 32, use 32 or more (224 is standard)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise KdbenchError("--device cuda: torch sees no CUDA GPU here; use --device cpu")


def result_archs(runs_dir: str | os.PathLike) -> list[str]:
    """Every architecture (students and teachers) of the jobs in the results store, in family order."""
    from kdbench.models import ARCHS
    from kdbench.reports.store import STORE_NAME, ResultsStore

    if not (Path(runs_dir) / STORE_NAME).is_file():
        raise KdbenchError(f"--archs results: no results store at {Path(runs_dir) / STORE_NAME}; run `kdbench run` "
                           f"first, pass --runs-dir, or name the architectures")
    with ResultsStore(runs_dir, create=False) as store:
        jobs = store.jobs()
    used = {j["arch"] for j in jobs} | {j["teacher_arch"] for j in jobs if j["teacher_arch"]}
    if not used:
        raise KdbenchError(f"--archs results: {Path(runs_dir) / STORE_NAME} has no jobs yet; run `kdbench run` first")
    return sorted((check_arch(a) for a in used), key=ARCHS.index)


def cmd_profile(args: argparse.Namespace) -> int:
    """`kdbench profile`: measure each architecture on each backend, print, store, and write JSON."""
    archs = tuple(result_archs(args.runs_dir) if args.archs.strip() == "results" else
                  parse_archs(args.archs, "--archs"))
    backends = parse_names(args.backends, BACKENDS, "backend")
    check_options(args)
    rows = []
    for arch in archs:
        rows += profile_arch(arch, backends, args.device, args.batch, args.crop, args.runs, args.export)
    emit_rows(rows, args)
    return 0
