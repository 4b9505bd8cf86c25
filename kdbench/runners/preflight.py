"""Checks that run before any training: initial weights and the device, so a run fails in seconds, not jobs."""

from __future__ import annotations

import difflib
from pathlib import Path

from kdbench.errors import KdbenchError

SPECIAL_WEIGHTS = ("imagenet", "none")
TRAIN_DEVICE_TYPES = ("cpu", "cuda", "mps")  # torch knows more (meta, xla...); kdbench trains on these


def parse_weights(value: str | None) -> str | dict[str, str] | None:
    """`imagenet`, `none`, a PATH (made absolute) or `ARCH=PATH,...` (one file per architecture)."""
    if value is None or str(value).strip() == "":
        return None
    value = str(value).strip()
    if value in SPECIAL_WEIGHTS:
        return value
    if "=" in value and not Path(value).expanduser().exists():
        out: dict[str, str] = {}
        for item in value.split(","):
            arch, sep, path = item.partition("=")
            if not sep or not arch.strip() or not path.strip():
                raise KdbenchError(f"--weights {value!r}: expected imagenet, none, PATH or ARCH=PATH,... "
                                   "(e.g. resnet34=r34.pth,resnet18=r18.pth)")
            path = path.strip()  # `mobilenet_v3_small=imagenet,resnet34=t.pth`: the names stay names
            out[arch.strip()] = path if path in SPECIAL_WEIGHTS else _absolute(path)
        return out
    return _absolute(value)


def check_weights_keys(weights: str | dict[str, str] | None, archs: set[str]) -> None:
    """`--weights ARCH=PATH,...` may only name architectures of the plan: a misspelt key is not ignored."""
    if not isinstance(weights, dict):
        return
    for key in weights:
        if key not in archs:
            close = difflib.get_close_matches(key, sorted(archs), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise KdbenchError(f"--weights names architecture {key!r}, which this run does not train{hint}: "
                               f"its architectures are {', '.join(sorted(archs))}")


def check_checkpoint_every(seconds: float | None) -> None:
    """--checkpoint-every: seconds >= 0 (NaN and negatives fail here, before any job, not in every job)."""
    if seconds is None:
        return
    from kdbench.runners.checkpoints import CheckpointPolicy

    CheckpointPolicy(seconds)


def check_load_size(load_size: int | None) -> None:
    """The cache's short side must be at least the cache's minimum (checked again when it is built)."""
    from kdbench.scenes.cache import MIN_LOAD_SIZE

    if load_size is not None and load_size < MIN_LOAD_SIZE:
        raise KdbenchError(f"--load-size {load_size} is too small: use at least {MIN_LOAD_SIZE} pixels")


def weights_for(weights: str | dict[str, str] | None, arch: str) -> str | None:
    """The weights one architecture starts from (None: the preset's)."""
    return weights.get(arch) if isinstance(weights, dict) else weights


def _absolute(path: str) -> str:
    # Absolute, so that the recorded config and Ray workers find the file from any working folder.
    return str(Path(path).expanduser().resolve())


def check_weights(pairs: set[tuple[str, str]], fetch: bool = True) -> None:
    """Load each (arch, weights) once, as training will: offline ImageNet or a bad file fails now.

    `imagenet` is fetched through torchvision's weights API (it lands in torch's cache, so training
    does not download it again); a file must exist and match the architecture. `fetch=False` (a dry run)
    leaves `imagenet` alone: it downloads nothing.
    """
    from kdbench.models import PoseNet

    for arch, weights in sorted(pairs):
        if weights in (None, "", "none") or (weights == "imagenet" and not fetch):
            continue
        if weights != "imagenet" and not Path(weights).is_file():
            raise KdbenchError(f"--weights {weights} (for {arch}) does not exist: pass an existing state_dict "
                               "PATH, --weights imagenet, or --weights none to train from scratch")
        try:
            PoseNet(arch, weights=weights)
        except KdbenchError as exc:
            raise KdbenchError(" ".join(str(exc).split())) from None  # one line, whatever the cause said


def check_device(name: str | None) -> str | None:
    """`auto`/None -> None (CUDA when available, else CPU); a named device must exist on this machine."""
    if name in (None, "", "auto"):
        return None
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise KdbenchError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type not in TRAIN_DEVICE_TYPES:
        raise KdbenchError(f"--device {name}: torch knows this device type, but kdbench cannot train or "
                           "evaluate on it; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise KdbenchError(f"--device {name}: CUDA is not available here (torch {torch.__version__}); "
                               "use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise KdbenchError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                               f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise KdbenchError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    return str(dev)



def check_method_fit(jobs) -> None:
    """Every (method, student arch, teacher arch, crop) of a plan builds its adaptors on a probe batch now.

    A method that cannot apply (adaptor=identity between different widths, a tap a backbone lacks) fails
    here with its fix, before any teacher trains, instead of at the first step of its student.
    """
    import torch

    from kdbench.methods import create_method
    from kdbench.models import PoseNet

    seen: set[tuple] = set()
    nets: dict[str, PoseNet] = {}
    for job in jobs:
        c = job.cfg
        if job.kind != "student" or not c.teacher_arch:
            continue
        key = (c.method, repr(sorted(c.method_params.items())), c.arch, c.teacher_arch, c.crop_size)
        if key in seen:
            continue
        seen.add(key)
        method = create_method(c.method, c.method_params)
        for arch in (c.arch, c.teacher_arch):
            if arch not in nets:
                nets[arch] = _shape_only(PoseNet, arch)
        try:
            with torch.no_grad():
                s_out, t_out = (_probe(nets[a], c.crop_size, taps) for a, taps in
                                ((c.arch, method.student_taps()), (c.teacher_arch, method.teacher_taps())))
                method.setup(s_out, t_out)
        except KdbenchError as exc:
            raise KdbenchError(f"{job.method} cannot teach a {c.arch} student from a {c.teacher_arch} teacher "
                               f"at {c.crop_size} px: " + " ".join(str(exc).split())) from None


def _shape_only(cls, arch: str):
    """A model for shape checks: on the meta device (no weights computed), or on the CPU where that fails."""
    import torch

    try:
        with torch.device("meta"):
            return cls(arch).eval()
    except (NotImplementedError, RuntimeError):  # RegNet's constructor reads tensor values
        return cls(arch).eval()


def _probe(net, crop: int, taps):
    import torch

    device = next(net.parameters()).device
    return net(torch.zeros(2, 3, crop, crop, device=device), taps=taps)
