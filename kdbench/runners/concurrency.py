"""How many jobs run at once on each device, and on which devices.

`--jobs-per-gpu auto` estimates a training job's GPU memory from its model and batch (below) and fits as many
as leave a fifth of the GPU free, at most MAX_JOBS_PER_GPU: a ResNet18 at batch 32 leaves most of an H100
idle, and four processes at once gave 2.7x the throughput of one (two gave 1.8x; issue 10's measurements).
On CPU the default is CPU_JOBS jobs at once (at most one per torch thread), chosen by benchmarks/bench_sweep.py:
a teacher and 4 students at the quick preset's sizes on 2 shared cores ran 3.3x and 3.9x faster as two
single-thread jobs than as one two-thread job (144 s vs 470 s, 169 s vs 663 s, both orders).

Every job trains with `job_threads(slots)` torch CPU threads: the machine's threads shared by the pool's
slots, whatever else is pending, so a job alone (a rerun of one job, the last of a run) computes what it
computes in a full pool; CPU results are bitwise reproducible only for a fixed thread count.
"""

from __future__ import annotations

from functools import cache

from kdbench.config import TrainConfig
from kdbench.errors import KdbenchError

MAX_JOBS_PER_GPU = 4
CPU_JOBS = 2
CUDA_CONTEXT_BYTES = 600 * 2**20  # per process: CUDA context and cuDNN workspace
# Training activations per input pixel and image in fp32 (forward and backward), rough figures for
# torchvision ResNets; bf16/fp16 autocast halves them. An estimate to choose a default, not a guarantee.
ACTIVATION_BYTES_PER_PIXEL = {"resnet18": 2000, "resnet34": 3000, "resnet50": 8000, "resnet101": 12000,
                              "resnet152": 17000}
PARAMS_M = {"resnet18": 11.7, "resnet34": 21.8, "resnet50": 25.6, "resnet101": 44.5, "resnet152": 60.2}
UNKNOWN_PARAMS_M = 60.0  # an architecture torchvision does not describe: counted as a ResNet152


@cache
def params_m(arch: str) -> float:
    """Millions of parameters: the table's for ResNets, torchvision's weights metadata (no download) otherwise."""
    if arch in PARAMS_M:
        return PARAMS_M[arch]
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(arch).DEFAULT.meta["num_params"] / 1e6
    except (ValueError, KeyError, AttributeError):
        return UNKNOWN_PARAMS_M


def activation_bytes_per_pixel(arch: str) -> float:
    """The table's figure for a ResNet; otherwise that of the smallest ResNet with at least as many parameters.

    Why by parameter count: it orders a family's members, and a mobile student gets a mobile figure, not
    ResNet152's. Rough: autograd's saved tensors at 224 px (meta device, one image) are 1587 bytes per pixel
    for resnet18, 483 for mobilenet_v3_small, 1845 for mobilenet_v2 and 2187 for efficientnet_b0, so networks
    with many activations per parameter may need up to about 1.4x this estimate.
    """
    if arch in ACTIVATION_BYTES_PER_PIXEL:
        return ACTIVATION_BYTES_PER_PIXEL[arch]
    n = params_m(arch)
    fits = [ACTIVATION_BYTES_PER_PIXEL[a] for a, m in PARAMS_M.items() if m >= n]
    return min(fits) if fits else ACTIVATION_BYTES_PER_PIXEL["resnet152"]


def job_memory_bytes(cfg: TrainConfig) -> int:
    """Estimated peak GPU memory of one training job (student, optimiser, activations, teacher)."""
    half = 0.5 if cfg.precision in ("bf16", "fp16") else 1.0
    pixels = cfg.batch_size * cfg.crop_size ** 2
    student = params_m(cfg.arch) * 1e6 * 16  # weights, gradients, Adam's two moments
    acts = pixels * activation_bytes_per_pixel(cfg.arch) * half
    teacher = 0.0
    if cfg.teacher_arch:  # frozen forward: weights plus the taps it keeps, about a tenth of training's
        teacher = params_m(cfg.teacher_arch) * 1e6 * 4 + 0.1 * pixels * \
            activation_bytes_per_pixel(cfg.teacher_arch) * half
    return int(student + acts + teacher + CUDA_CONTEXT_BYTES)


def auto_jobs_per_gpu(cfgs: list[TrainConfig], gpu_bytes: int) -> int:
    """Jobs per GPU that fit the largest job four-fifths of `gpu_bytes`, between 1 and MAX_JOBS_PER_GPU."""
    if not cfgs:
        return 1
    need = max(job_memory_bytes(c) for c in cfgs)
    return max(1, min(MAX_JOBS_PER_GPU, int(0.8 * gpu_bytes // need)))


def parse_jobs_per_gpu(value: str | int | None) -> int | None:
    """'auto' / None -> None (decide later); otherwise a positive integer."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise KdbenchError(f"--jobs-per-gpu {value!r}: give a positive integer or 'auto'")
    return n


def uses_cuda(device: str | None) -> bool:
    """Whether jobs of `device` (None: auto, CUDA when available) train on a GPU."""
    import torch

    return (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")


def cpu_slots(limit: int = CPU_JOBS) -> int:
    """Jobs at once on the CPU by default: `limit`, at most one per torch thread, at least 1."""
    import torch

    return max(1, min(limit, torch.get_num_threads()))


def job_slots(cfgs: list[TrainConfig], jobs_per_gpu: int | None, device: str | None = None) -> list[str]:
    """One device name per concurrent job: every visible GPU `jobs_per_gpu` times (interleaved), or the CPU."""
    import torch

    if not uses_cuda(device):
        return ["cpu"] * (jobs_per_gpu or cpu_slots())
    if not torch.cuda.is_available():
        raise KdbenchError("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    gpus = [device] if device and ":" in device else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if jobs_per_gpu is None:
        smallest = min(torch.cuda.get_device_properties(g).total_memory for g in gpus)
        jobs_per_gpu = auto_jobs_per_gpu(cfgs, smallest)
    return [g for _ in range(jobs_per_gpu) for g in gpus]


def job_threads(slots: list[str]) -> int:
    """Torch CPU threads of every job of a pool of `slots`: this machine's threads over the slots (at least 1).

    A function of the configured pool and the machine only, never of how many jobs are pending.
    """
    import torch

    return max(1, torch.get_num_threads() // max(1, len(slots)))
