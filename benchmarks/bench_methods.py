"""Per-step cost of each KD method against "baseline step + teacher forward" (CPU by default).

    python benchmarks/bench_methods.py                      # resnet18 <- resnet34, 56 px, batch 32
    python benchmarks/bench_methods.py --steps 30 --crop 112

One step = teacher forward (no grad, the method's taps) + student forward + method loss + backward + Adam
step over the student and the method's adaptors. Every configuration runs once per round, in rotating
order, so that drift in machine load hits them alike; the table reports medians over the timed rounds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch

from kdbench.methods import GroundTruth, LossContext, PoseLoss, available_methods, create_method
from kdbench.methods.variants import expand_methods as parse_methods
from kdbench.methods.variants import resolve
from kdbench.models import PoseNet

TARGET = 1.10  # no method should cost more than 10% over baseline step + teacher forward


def make_step(name: str | None, params: dict, student: PoseNet, teacher: PoseNet, x: torch.Tensor,
              gt: GroundTruth, pose_loss: PoseLoss) -> Callable[[], None]:
    """A closure running one training step; name None: the reference (baseline loss + teacher forward)."""
    student = copy.deepcopy(student).train()
    method = create_method(name or "baseline", params)
    with torch.no_grad():
        t_out = teacher(x, taps=method.teacher_taps())
        method.setup(student(x, taps=method.student_taps()), t_out)
        if method.needs_prepare:  # a stand-in for the pass over the training set: any spread will do
            method.prepare([(t_out, gt), (t_out, GroundTruth(t_out.xyz, t_out.q))], pose_loss)
    opt = torch.optim.Adam(list(student.parameters()) + list(method.parameters()), lr=1e-4)
    ctx = LossContext(pose_loss, epoch=5, epochs=10)
    use_teacher = name is None or method.needs_teacher

    def step() -> None:
        t_out = None
        if use_teacher:
            with torch.no_grad():
                t_out = teacher(x, taps=method.teacher_taps())
        terms = method.loss(student(x, taps=method.student_taps()), t_out, gt, ctx)
        opt.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        opt.step()

    return step


def run(args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    """Per configuration: median seconds per step, ratio to the reference, interquartile range / median."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    student, teacher = PoseNet(args.student), PoseNet(args.teacher).eval().requires_grad_(False)
    x = torch.randn(args.batch, 3, args.crop, args.crop)
    q = torch.nn.functional.normalize(torch.randn(args.batch, 4), dim=1)
    gt = GroundTruth(torch.randn(args.batch, 3), q * torch.sign(q[:, :1]))
    pose_loss = PoseLoss(500.0)
    names = [n for n in available_methods() if n != "baseline"]
    if args.methods != "all":
        names = parse_methods(args.methods)  # names, variants (sckd:adaptor=conv-bn) and groups
    configs: dict[str, Callable[[], None]] = {
        "baseline (no teacher)": make_step("baseline", {}, student, teacher, x, gt, pose_loss),
        "reference: baseline + teacher fwd": make_step(None, {}, student, teacher, x, gt, pose_loss),
    }
    for item in names:
        v = resolve(item)
        params = dict(v.params)
        label = v.label
        if v.name == "attentive" and params["schedule"] == "two-stage":  # joint: both stages' work in one step
            params["schedule"], label = "joint", f"{v.label} (joint)"
        configs[label] = make_step(v.name, params, student, teacher, x, gt, pose_loss)
    times: dict[str, list[float]] = {k: [] for k in configs}
    labels = list(configs)
    for r in range(args.warmup + args.steps):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            t0 = time.perf_counter()
            configs[label]()
            if r >= args.warmup:
                times[label].append(time.perf_counter() - t0)
    ref = statistics.median(times["reference: baseline + teacher fwd"])
    rows = []
    for k, v in times.items():
        q1, med, q3 = statistics.quantiles(v, n=4)
        rows.append((k, med, med / ref, (q3 - q1) / med))
    return rows


def main() -> int:
    """Parse arguments, measure, print the table; exit 1 if a method misses the target."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="resnet18")
    p.add_argument("--teacher", default="resnet34")
    p.add_argument("--crop", type=int, default=56)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=15, help="timed rounds (each runs every configuration once)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--methods", default="all", help="all, or comma-separated methods and variants "
                   "(NAME:KEY=VALUE, e.g. sckd:adaptor=conv-bn)")
    args = p.parse_args()
    rows = run(args)
    print(f"{args.student} student, {args.teacher} teacher, {args.crop} px, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'configuration':<36} {'ms/step':>9} {'vs reference':>13} {'IQR/median':>11}")
    for label, sec, ratio, spread in rows:
        print(f"{label:<36} {sec * 1e3:>9.1f} {ratio:>12.3f}x {spread:>10.1%}")
    worst = max(row[2] for row in rows[2:]) if rows[2:] else 1.0
    print(f"worst method: {worst:.3f}x (target <= {TARGET:.2f}x): {'ok' if worst <= TARGET else 'MISSED'}")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
