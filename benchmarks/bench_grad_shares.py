"""Gradient norm on the student trunk of each sckd term (gt, sigma * SC, alpha * hint), per adaptor.

    python benchmarks/bench_grad_shares.py                  # 30 teacher epochs on a 96-frame render
    python benchmarks/bench_grad_shares.py --teacher-epochs 5 --frames 8 --student-epochs 0,3

Setting: a tiny SynthRoom render (4 training sequences x --frames frames, --size px), quick-preset
sizes (load 64, crop 56, batch 32, from scratch), a resnet34 teacher trained briefly with kdbench's own
training loop (--teacher-epochs; quality is modest, but its features are no longer random), and a resnet18
student, fresh as at the start of KD training (0) and after baseline training for each further count in
--student-epochs. On the first training batch, each term is backpropagated alone and the L2 norm of the
gradient over all student trunk parameters is reported.

Rows: `pre-fix` is sckd as kdbench had it before issue 11 (adaptor 1x1 conv + BatchNorm without ReLU,
S_F/S_P diagonal kept at 1, KL summed over the batch); `conv-bn` and `auto` are today's method with that
adaptor (all else at the defaults); `auto` is the default (no adaptor at layer4: 512 = 512).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate
from torch import nn

from kdbench.config import make_config
from kdbench.methods import GroundTruth, LossContext, PoseLoss, create_method
from kdbench.models import PoseNet
from kdbench.runners.train import load_model, train
from kdbench.scenes.cache import load_split_cache
from kdbench.scenes.dataset import PoseDataset
from kdbench.scenes.synth import render_scene

SCENE = "SynthRoom"
ROWS = {
    "pre-fix (conv+BN, no ReLU; diag 1; KL sum)": {"adaptor": "conv", "zero_diagonal": False, "kl_reduction": "sum"},
    "adaptor=conv-bn": {"adaptor": "conv-bn"},
    "adaptor=auto (default)": {},
}


def trunk_grad_norm(student: PoseNet) -> float:
    """L2 norm of the gradient over every trunk parameter (0 where none reached it)."""
    sq = sum(float(p.grad.pow(2).sum()) for p in student.trunk.parameters() if p.grad is not None)
    return sq ** 0.5


def measure(name: str, params: dict, student0: PoseNet, teacher: PoseNet, x: torch.Tensor, gt: GroundTruth,
            pose_loss: PoseLoss, seed: int) -> list:
    """One row: each term's value and trunk gradient norm, backpropagated alone."""
    student = PoseNet("resnet18")
    student.load_state_dict(student0.state_dict())
    m = create_method("sckd", params)
    student.eval()  # the runner sizes adaptors in eval mode: the probe must not move BN statistics
    with torch.no_grad():
        t_out = teacher(x, taps=m.teacher_taps())
        m.setup(student(x, taps=m.student_taps()), t_out)
    if name.startswith("pre-fix"):  # the adaptor kdbench built before: 1x1 conv + BatchNorm, no final ReLU
        conv = m.adaptors["layer4"][0]
        m.adaptors["layer4"] = nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels))
    student.train()
    m.train()
    row = [name]
    values = []
    for term in ("gt", "sc", "hint"):
        student.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # the same dropout mask for every term and row
        terms = m.loss(student(x, taps=m.student_taps()), t_out, gt, LossContext(pose_loss, 0, 12))
        terms[term].backward()
        row.append(trunk_grad_norm(student))
        values.append(float(terms[term].detach()))
    share = row[3] / max(row[1] + row[2] + row[3], 1e-30)
    return row + [share] + values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher-epochs", type=int, default=30)
    ap.add_argument("--frames", type=int, default=24, help="frames per sequence (4 training sequences)")
    ap.add_argument("--size", default="80x60", help="render size WxH")
    ap.add_argument("--student-epochs", default="0,12", help="comma-separated: measure the student fresh (0) "
                    "and after that many epochs of baseline training")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    sizes = dict(load_size=64, crop_size=56, batch_size=32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        render_scene(SCENE, root, frames_per_seq=args.frames, size=(w, h), quiet=True)
        t_cfg = make_config(SCENE, "resnet34", "quick", role="teacher", seed=args.seed,
                            epochs=args.teacher_epochs, **sizes)
        res = train(t_cfg, root, root / "teacher", device="cpu")
        teacher, _ = load_model(res.checkpoint)
        teacher.eval().requires_grad_(False)
        s_cfg = make_config(SCENE, "resnet18", "quick", role="student", seed=args.seed, method="sckd", **sizes)
        cache = load_split_cache(SCENE, root, "train", s_cfg.load_size, quiet=True)
        ds = PoseDataset(cache, s_cfg.crop_size, train=True, normalize=s_cfg.normalize, seed=args.seed)
        x, pose = next(ds.batches(min(s_cfg.batch_size, len(ds)), shuffle=True, epoch=0, drop_last=True))
        gt = GroundTruth(pose[:, :3], pose[:, 3:])
        pose_loss = PoseLoss(s_cfg.beta, form=s_cfg.pose_loss)
        tables = []
        for n in (int(v) for v in args.student_epochs.split(",")):
            torch.manual_seed(args.seed)
            student0 = PoseNet("resnet18", head_init=s_cfg.head_init)
            if n > 0:
                b_cfg = s_cfg.replace(method="baseline", method_params={}, epochs=n)
                student0, _ = load_model(train(b_cfg, root, root / f"student-{n}", device="cpu").checkpoint)
            rows = []
            for name, params in ROWS.items():
                torch.manual_seed(args.seed)  # the same adaptor weights in the rows that have one
                rows.append(measure(name, params, student0, teacher, x, gt, pose_loss, args.seed))
            tables.append((n, rows))
    print(f"sckd on one {SCENE} batch of {len(x)} (crop {s_cfg.crop_size}, {s_cfg.pose_loss}-form pose loss, "
          f"beta {s_cfg.beta:g}): resnet34 teacher after {args.teacher_epochs} epochs on {len(ds)} frames "
          f"(test median {res.metrics['median_t']:.3g} m, {res.metrics['median_r']:.3g} deg); sigma = alpha = 100")
    for n, rows in tables:
        print(f"\nresnet18 student {'fresh' if n == 0 else f'after {n} epochs of baseline training'}:")
        print(tabulate(rows, headers=["sckd", "|grad| gt", "|grad| sigma*SC", "|grad| alpha*hint", "hint share",
                                      "gt", "sigma*SC", "alpha*hint"], floatfmt=".3g"))


if __name__ == "__main__":
    main()
