"""Pure loss functions shared by the distillation methods (no state, no modules)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _promote(a: object) -> object:
    return a.float() if isinstance(a, torch.Tensor) and a.dtype in (torch.float16, torch.bfloat16) else a


def full_precision(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run `fn` outside autocast, half-precision tensor arguments promoted to float32.

    Why: under CUDA AMP a Gram matrix A A^T of a wide layer overflows float16 (sums of 10^4-10^5
    products), and cosines of cosines lose the precision the relational losses live on.
    """

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
        device = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        with torch.autocast(device, enabled=False):
            return fn(*map(_promote, args), **{k: _promote(v) for k, v in kwargs.items()})

    return wrapper


def flat(f: torch.Tensor) -> torch.Tensor:
    """Features as b x d (one row per sample)."""
    return f.reshape(f.shape[0], -1)


def _zero_diagonal(s: torch.Tensor) -> torch.Tensor:
    return s.masked_fill(torch.eye(len(s), dtype=torch.bool, device=s.device), 0.0)


@full_precision
def cosine_self_similarity(a: torch.Tensor, zero_diagonal: bool = False) -> torch.Tensor:
    """b x b matrix of cosines between the rows of `a` (flattened per sample); optionally 0 on the diagonal
    (torchmetrics' pairwise_cosine_similarity(x), which SCKD calls, zeroes it by default)."""
    a = F.normalize(flat(a), dim=1)
    s = a @ a.t()
    return _zero_diagonal(s) if zero_diagonal else s


@full_precision
def pose_self_similarity(xyz: torch.Tensor, q: torch.Tensor, quat: str = "canonical",
                         zero_diagonal: bool = False) -> torch.Tensor:
    """SCKD's S_P: b x b cosines between the 7-d poses (xyz, q).

    quat="canonical" takes q as given (unit, w >= 0); "nearest" flips q_j to the sign nearer q_i for
    each pair, so that S_P does not depend on which of q and -q stands for a rotation.
    """
    n = torch.cat([xyz, q], dim=1).norm(dim=1).clamp(min=1e-12)
    qq = q @ q.t()
    s = (xyz @ xyz.t() + (qq.abs() if quat == "nearest" else qq)) / (n.unsqueeze(1) * n.unsqueeze(0))
    return _zero_diagonal(s) if zero_diagonal else s


@full_precision
def similarity_preserving(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Tung & Mori: ||G~_t - G~_s||_F^2 / b^2 with G = A A^T row-L2-normalised."""
    a_s, a_t = flat(f_s), flat(f_t)
    g_s = F.normalize(a_s @ a_s.t(), dim=1)
    g_t = F.normalize(a_t @ a_t.t(), dim=1)
    return ((g_t - g_s) ** 2).sum() / a_s.shape[0] ** 2


@full_precision
def self_cross_similarity(f: torch.Tensor, s_p: torch.Tensor, zero_diagonal: bool = False) -> torch.Tensor:
    """SCKD's c (b,): cosine between row i of the features' self-similarity and row i of the poses'."""
    return F.cosine_similarity(cosine_self_similarity(f, zero_diagonal), s_p, dim=1)


KL_REDUCTIONS = ("batchmean", "sum")


@full_precision
def sc_divergence(c_s: torch.Tensor, c_t: torch.Tensor, divergence: str,
                  reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(c_t) || softmax(c_s)) (teacher is the target), or MSE(c_s, c_t).

    c is one vector of b entries per batch; the softmax runs over the batch. reduction "sum" is the KL of
    those two distributions; "batchmean" divides it by b, which is what torch's kl_div(..., "batchmean")
    does to a 1-d input, as SCKD's code calls it.
    """
    dtype = c_s.dtype
    # In float64: at SCKD's defaults the KL is 1e-7 to 1e-10, below float32's resolution of the log-probs
    # (about 4e-7 at log(1/b)), so a float32 value, and the logged `sc` column, would be rounding noise.
    c_s, c_t = c_s.double(), c_t.double()
    if divergence == "mse":
        return F.mse_loss(c_s, c_t).to(dtype)
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"KL reduction must be one of {KL_REDUCTIONS}, got {reduction!r}")
    # kl_div(input, target) computes sum target * (log target - input): input is the student's log-probs.
    kl = F.kl_div(F.log_softmax(c_s, dim=0), F.log_softmax(c_t, dim=0), log_target=True, reduction="sum")
    return (kl / c_s.shape[0] if reduction == "batchmean" else kl).to(dtype)


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between rows, the diagonal exactly 0 (no sqrt-at-zero gradient)."""
    sq = (e * e).sum(1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=1e-12)
    return d2.sqrt() * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


@full_precision
def rkd_distance(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """RKD distance loss: smooth-L1 between pairwise distances, each normalised by its mean off-diagonal."""
    d_s, d_t = _pairwise_distances(flat(f_s)), _pairwise_distances(flat(f_t))
    off = ~torch.eye(len(d_s), dtype=torch.bool, device=d_s.device)
    return F.smooth_l1_loss(d_s / d_s[off].mean(), d_t / d_t[off].mean())


@full_precision
def rkd_angle(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """RKD angle loss: smooth-L1 between the cosines <e_ij, e_ik> of unit difference vectors, all triplets."""

    def angles(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # (b, b, d): diff[j, i] = unit(e_i - e_j)
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)

    return F.smooth_l1_loss(angles(flat(f_s)), angles(flat(f_t)))


@full_precision
def pkt(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """PKT (Passalis 2018, reference code): cosine kernels shifted to [0, 1], row-normalised, then
    mean_ij p_t log(p_t / p_s)."""

    def kernel(e: torch.Tensor) -> torch.Tensor:
        e = e / (e.norm(dim=1, keepdim=True) + eps)
        e = torch.where(torch.isnan(e), torch.zeros_like(e), e)  # the reference's e[e != e] = 0
        k = (e @ e.t() + 1) / 2
        return k / k.sum(1, keepdim=True)

    p_s, p_t = kernel(flat(f_s)), kernel(flat(f_t))
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@full_precision
def attention_transfer(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """AT (Zagoruyko 2017): MSE between L2-normalised spatial maps mean_c(f^2).

    Maps of different sizes: the larger is adaptive-average-pooled to the smaller, as RepDistiller's at_loss
    does (it compares heights and pools to a square; here height and width each go to the smaller one).
    """
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    f_s = F.adaptive_avg_pool2d(f_s, size) if f_s.shape[2:] != size else f_s
    f_t = F.adaptive_avg_pool2d(f_t, size) if f_t.shape[2:] != size else f_t

    def at(f: torch.Tensor) -> torch.Tensor:
        return F.normalize(f.pow(2).mean(1).reshape(f.shape[0], -1), dim=1)

    return (at(f_s) - at(f_t)).pow(2).mean()
