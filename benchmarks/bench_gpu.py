"""kdbench's training step against the bare torchvision step of the same model, batch, crop and precision.

    python benchmarks/bench_gpu.py                            # GPU: resnet18, batch 32, crop 224, auto precision
    python benchmarks/bench_gpu.py --device cpu --batch 8 --crop 56 --load 64 --frames 12   # CPU smoke run

Both run in this process on a rendered synthetic scene. kdbench: `train()` for a few epochs (the first is
warm-up: device upload, cuDNN autotuning, allocator growth); images/s = steps x batch / the epoch seconds that
train() records. Bare: torchvision's ResNet, Adam, a random input already on the device, the same autocast
(and GradScaler for fp16), loss = mean square of the output; synchronised before and after the timed steps.
A second pair does the same for a KD student (sckd by default, from a resnet34 teacher trained for one epoch)
against the bare student step plus a no-grad teacher forward. Target: kdbench / bare >= 0.9.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from tabulate import tabulate

from kdbench.config import make_config
from kdbench.runners.precision import Precision, resolve_precision
from kdbench.runners.train import train
from kdbench.scenes.synth import render_scene

TARGET = 0.9


def bare_images_per_s(arch: str, teacher_arch: str | None, batch: int, crop: int, precision: str,
                      device: torch.device, steps: int) -> float:
    """torchvision's model, Adam, autocast as kdbench would, input already on the device."""
    model = torchvision.models.get_model(arch, weights=None).to(device).train()
    teacher = torchvision.models.get_model(teacher_arch, weights=None).to(device).eval() if teacher_arch else None
    x = torch.randn(batch, 3, crop, crop, device=device)
    if device.type == "cuda":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher is not None else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    prec = Precision(precision, device)

    def step() -> None:
        with prec.autocast():
            if teacher is not None:
                with torch.no_grad():
                    teacher(x)
            loss = model(x).float().pow(2).mean()
        prec.step(loss, opt)

    for _ in range(max(3, steps // 5)):  # warm-up
        step()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch / (time.perf_counter() - t0)


def kdbench_images_per_s(cfg, data_root: Path, out: Path, device: str, teacher_ckpt: Path | None = None) -> float:
    """Epochs after the first (warm-up), as train() timed them."""
    res = train(cfg, data_root, out, teacher_ckpt, device=device)
    timed = res.history[1:]
    return sum(h["steps"] for h in timed) * cfg.batch_size / sum(h["seconds"] for h in timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--teacher-arch", default="resnet34")
    ap.add_argument("--method", default="sckd")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=224)
    ap.add_argument("--load", type=int, default=256)
    ap.add_argument("--frames", type=int, default=80, help="frames per synthetic sequence (4 train sequences)")
    ap.add_argument("--epochs", type=int, default=4, help="kdbench epochs (the first is warm-up)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        short = args.load
        render_scene("SynthRoom", root, quiet=True, frames_per_seq=args.frames, size=(short * 4 // 3, short))
        common = dict(batch_size=args.batch, load_size=args.load, crop_size=args.crop, precision=precision,
                      compile=args.compile, epochs=args.epochs)
        student = make_config("SynthRoom", args.arch, "quick", role="student", **common)
        teacher = make_config("SynthRoom", args.teacher_arch, "quick", role="teacher", **{**common, "epochs": 1})
        t_ckpt = train(teacher, root, Path(tmp) / "teacher", device=args.device).checkpoint
        kd = make_config("SynthRoom", args.arch, "quick", role="student", method=args.method,
                         teacher_hash=teacher.hash(), teacher_arch=args.teacher_arch, **common)
        steps = max(10, (4 * args.frames // args.batch) * (args.epochs - 1))
        rows = []
        for label, cfg, t_arch, ckpt in (("student step", student, None, None),
                                         (f"{args.method} step (teacher {args.teacher_arch})", kd,
                                          args.teacher_arch, t_ckpt)):
            ours = kdbench_images_per_s(cfg, root, Path(tmp) / label.split()[0], args.device, ckpt)
            bare = bare_images_per_s(args.arch, t_arch, args.batch, args.crop, precision, device, steps)
            rows.append([label, f"{ours:.0f}", f"{bare:.0f}", f"{ours / bare:.2f}"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch}, batch {args.batch}, crop {args.crop}, {precision}{', compiled' if args.compile else ''}, "
          f"{name}; target ratio >= {TARGET}")
    print(tabulate(rows, headers=["step", "kdbench images/s", "bare torchvision images/s", "ratio"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
