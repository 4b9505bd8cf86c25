"""Checks that run before any training: initial weights and the device, so a run fails in seconds, not jobs."""

from __future__ import annotations

from pathlib import Path

from kdbench.errors import KdbenchError

SPECIAL_WEIGHTS = ("imagenet", "none")


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
            out[arch.strip()] = _absolute(path.strip())
        return out
    return _absolute(value)


def weights_for(weights: str | dict[str, str] | None, arch: str) -> str | None:
    """The weights one architecture starts from (None: the preset's)."""
    return weights.get(arch) if isinstance(weights, dict) else weights


def _absolute(path: str) -> str:
    # Absolute, so that the recorded config and Ray workers find the file from any working folder.
    return str(Path(path).expanduser().resolve())


def check_weights(pairs: set[tuple[str, str]]) -> None:
    """Load each (arch, weights) once, as training will: offline ImageNet or a bad file fails now.

    `imagenet` is fetched through torchvision's weights API (it lands in torch's cache, so training
    does not download it again); a file must exist and match the architecture.
    """
    from kdbench.models import PoseNet

    for arch, weights in sorted(pairs):
        if weights in (None, "", "none"):
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

