"""Built-in KD methods: losses against plain float64 loops, gradients, adaptors, schedules, parsing, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdbench.cli import main
from kdbench.errors import KdbenchError
from kdbench.methods import GroundTruth, LossContext, PoseLoss, create_method, resolved_params
from kdbench.methods.attentive import student_units
from kdbench.methods.functional import sc_divergence
from kdbench.models import PoseNet, PoseOutput

pytestmark = pytest.mark.usefixtures("one_thread")

BUILTINS = ("baseline", "vanilla", "attentive", "similarity", "hint", "sckd", "rkd", "pkt", "at")
B = 4
BETA = 10.0
SHAPES = {"layer2": (B, 6, 4, 4), "layer3": (B, 7, 3, 3), "layer4": (B, 8, 2, 2), "pool": (B, 8)}
T_CHANNELS = {"layer2": 5, "layer3": 9, "layer4": 12, "pool": 10}


# ---------------------------------------------------------------- random inputs and plain references

def rand_output(gen: torch.Generator, teacher: bool = False, grad: bool = False) -> PoseOutput:
    """Random float64 poses and features (teacher features have other channel counts)."""
    feats = {}
    for name, shape in SHAPES.items():
        shape = (shape[0], T_CHANNELS[name], *shape[2:]) if teacher else shape
        feats[name] = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=grad)
    xyz = torch.randn(B, 3, generator=gen, dtype=torch.float64, requires_grad=grad)
    q = torch.nn.functional.normalize(torch.randn(B, 4, generator=gen, dtype=torch.float64), dim=1)
    return PoseOutput(xyz, q.requires_grad_(grad), feats)


def rand_gt(gen: torch.Generator) -> GroundTruth:
    q = torch.nn.functional.normalize(torch.randn(B, 4, generator=gen, dtype=torch.float64), dim=1)
    return GroundTruth(torch.randn(B, 3, generator=gen, dtype=torch.float64), q * torch.sign(q[:, :1]))


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    return rand_output(gen, grad=True), rand_output(gen, teacher=True), rand_gt(gen)


def ctx(epoch: int = 0, epochs: int = 10) -> LossContext:
    return LossContext(PoseLoss(BETA), epoch, epochs)


def np_(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def ref_l(xyz, q, xyz2, q2) -> list[float]:
    """l(p, p') per sample, one Python loop."""
    return [float(np.sum((xyz[i] - xyz2[i]) ** 2) + BETA * np.sum((q[i] - q2[i]) ** 2))
            for i in range(len(xyz))]


def ref_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_adapt(method, layer: str, f: np.ndarray) -> np.ndarray:
    """The adaptor by hand: 1x1 conv / Linear (per pixel matrix product), BatchNorm with batch statistics,
    ReLU; the identity passes f through."""
    y = f.copy()
    adaptor = method.adaptors[layer]
    for mod in (adaptor if isinstance(adaptor, torch.nn.Sequential) else [adaptor]):
        if isinstance(mod, torch.nn.Identity):
            continue
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            w = np_(mod.weight).reshape(mod.weight.shape[0], -1)
            assert mod.bias is None  # SCKD's conv1x1 has no bias
            if y.ndim == 2:
                y = np.array([w @ y[i] for i in range(len(y))])
                continue
            b, _, h, wd = y.shape
            out = np.zeros((b, w.shape[0], h, wd))
            for i in range(b):
                for r in range(h):
                    for c in range(wd):
                        out[i, :, r, c] = w @ y[i, :, r, c]
            y = out
        elif isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            gamma, shift = np_(mod.weight), np_(mod.bias)
            for ch in range(y.shape[1]):
                vals = y[:, ch].ravel()
                mean, var = vals.mean(), vals.var()  # biased variance, as BatchNorm normalises in training
                y[:, ch] = (y[:, ch] - mean) / math.sqrt(var + mod.eps) * gamma[ch] + shift[ch]
        elif isinstance(mod, torch.nn.ReLU):
            y = np.maximum(y, 0.0)
        else:
            raise AssertionError(f"unexpected adaptor module {mod}")
    return y


def ref_gt(s, gt) -> float:
    return float(np.mean(ref_l(np_(s.xyz), np_(s.q), np_(gt.xyz), np_(gt.q))))


def ref_sp(fs: np.ndarray, ft: np.ndarray) -> float:
    """Similarity preserving: G = A A^T per entry, rows L2-normalised, squared Frobenius / b^2."""
    b = fs.shape[0]
    gs, gt = np.zeros((b, b)), np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            gs[i, j] = fs[i].ravel() @ fs[j].ravel()
            gt[i, j] = ft[i].ravel() @ ft[j].ravel()
    for i in range(b):
        gs[i] /= np.linalg.norm(gs[i])
        gt[i] /= np.linalg.norm(gt[i])
    return float(sum((gt[i, j] - gs[i, j]) ** 2 for i in range(b) for j in range(b)) / b**2)


def ref_self_sim(rows: list[np.ndarray], zero_diagonal: bool) -> np.ndarray:
    """Cosines between rows; torchmetrics' pairwise_cosine_similarity(x) sets the diagonal to 0."""
    b = len(rows)
    return np.array([[0.0 if (zero_diagonal and i == j) else ref_cos(rows[i], rows[j]) for j in range(b)]
                     for i in range(b)])


def ref_pose_sim(poses: np.ndarray, zero_diagonal: bool, quat: str = "canonical") -> np.ndarray:
    """S_P; quat "nearest" flips q_j to the sign nearer q_i before the cosine, pair by pair."""
    b = len(poses)
    out = np.zeros((b, b))
    for i in range(b):
        for j in range(b):
            pj = poses[j].copy()
            if quat == "nearest" and poses[i][3:] @ pj[3:] < 0:
                pj[3:] = -pj[3:]
            out[i, j] = 0.0 if (zero_diagonal and i == j) else ref_cos(poses[i], pj)
    return out


def ref_c(f: np.ndarray, poses: np.ndarray, zero_diagonal: bool = True, quat: str = "canonical") -> np.ndarray:
    """SCKD's self-cross similarity c_i = cos(S_F[i, :], S_P[i, :])."""
    b = f.shape[0]
    s_f = ref_self_sim([f[i].ravel() for i in range(b)], zero_diagonal)
    s_p = ref_pose_sim(poses, zero_diagonal, quat)
    return np.array([ref_cos(s_f[i], s_p[i]) for i in range(b)])


def ref_kl(c_t: np.ndarray, c_s: np.ndarray, reduction: str = "sum") -> float:
    """KL(softmax(c_t) || softmax(c_s)) = sum p_t (log p_t - log p_s): the teacher is the target.

    "batchmean" divides by len(c), as torch's kl_div(..., reduction="batchmean") does to a 1-d input.
    """
    p_t, p_s = np.exp(c_t) / np.exp(c_t).sum(), np.exp(c_s) / np.exp(c_s).sum()
    kl = float(sum(p_t[i] * (math.log(p_t[i]) - math.log(p_s[i])) for i in range(len(c_t))))
    return kl / len(c_t) if reduction == "batchmean" else kl


def assert_terms(terms: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert set(terms) == set(expected)
    for k, v in expected.items():
        assert float(terms[k].detach()) == pytest.approx(v, rel=1e-5, abs=1e-5), k


def built(name: str, batch, **params):
    """A method after setup() on the batch, in float64."""
    s, t, _ = batch
    m = create_method(name, params)
    m.setup(s, t)
    return m.double()


# ---------------------------------------------------------------- loss values

def test_baseline_and_vanilla_match_loops(batch):
    s, t, gt = batch
    assert_terms(create_method("baseline").loss(s, None, gt, ctx()), {"gt": ref_gt(s, gt)})
    imit = np.mean(ref_l(np_(s.xyz), np_(s.q), np_(t.xyz), np_(t.q)))
    assert_terms(create_method("vanilla", {"alpha": 0.3}).loss(s, t, gt, ctx()),
                 {"gt": 0.3 * ref_gt(s, gt), "imitation": 0.7 * imit})


@pytest.mark.parametrize("layers", ["layer4", "layer2,layer3,pool"])
def test_similarity_matches_loops(batch, layers):
    s, t, gt = batch
    m = create_method("similarity", {"layers": layers})
    sp = sum(ref_sp(np_(s.features[n]), np_(t.features[n])) for n in layers.split(","))
    assert_terms(m.loss(s, t, gt, ctx()), {"gt": ref_gt(s, gt), "similarity": 3000.0 * sp})


@pytest.mark.parametrize("adaptor", ["auto", "conv", "conv-bn"])
def test_hint_matches_loops(batch, adaptor):
    s, t, gt = batch
    m = built("hint", batch, layers="layer2,layer4,pool", adaptor=adaptor)
    hint = sum(np.mean((ref_adapt(m, n, np_(s.features[n])) - np_(t.features[n])) ** 2)
               for n in ("layer2", "layer4", "pool"))
    assert_terms(m.loss(s, t, gt, ctx()), {"gt": ref_gt(s, gt), "hint": 100.0 * hint})


def same_shaped_teacher(batch) -> PoseOutput:
    """Teacher features shaped like the student's (resnet34 -> resnet18 at layer4: 512 = 512)."""
    s, t, _ = batch
    gen = torch.Generator().manual_seed(9)
    feats = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in s.features.items()}
    return PoseOutput(t.xyz, t.q, feats)


@pytest.mark.parametrize("adaptor", ["auto", "identity"])
def test_hint_matches_directly_when_shapes_agree(batch, adaptor):
    """SCKD's hint path: no adaptor (and no trainable parameter) when teacher and student shapes agree."""
    s, _, gt = batch
    t = same_shaped_teacher(batch)
    for name in ("hint", "sckd", "attentive"):
        m = create_method(name, {"adaptor": adaptor})
        m.setup(s, t)
        assert list(m.parameters()) == [] and all(isinstance(a, torch.nn.Identity) for a in m.adaptors.values())
    m = create_method("hint", {"layers": "layer2,pool", "adaptor": adaptor})
    m.setup(s, t)
    hint = sum(np.mean((np_(s.features[n]) - np_(t.features[n])) ** 2) for n in ("layer2", "pool"))
    assert_terms(m.loss(s, t, gt, ctx()), {"gt": ref_gt(s, gt), "hint": 100.0 * hint})


@pytest.mark.parametrize("divergence,reduction,zero_diagonal,quat", [
    ("kl", "batchmean", True, "canonical"),  # the defaults
    ("kl", "sum", True, "canonical"),
    ("kl", "batchmean", False, "canonical"),
    ("kl", "batchmean", True, "nearest"),
    ("mse", "batchmean", True, "canonical"),
])
def test_sckd_matches_loops(batch, divergence, reduction, zero_diagonal, quat):
    s, t, gt = batch
    params = dict(sigma=50, alpha=7, sc_layers="layer2,layer3", divergence=divergence, kl_reduction=reduction,
                  zero_diagonal=zero_diagonal, sp_quat=quat)
    m = built("sckd", batch, **params)
    poses = np.concatenate([np_(gt.xyz), np_(gt.q)], axis=1)
    sc = 0.0
    for n in ("layer2", "layer3"):
        c_s = ref_c(np_(s.features[n]), poses, zero_diagonal, quat)
        c_t = ref_c(np_(t.features[n]), poses, zero_diagonal, quat)
        sc += ref_kl(c_t, c_s, reduction) if divergence == "kl" else float(np.mean((c_s - c_t) ** 2))
    hint = np.mean((ref_adapt(m, "layer4", np_(s.features["layer4"])) - np_(t.features["layer4"])) ** 2)
    assert_terms(m.loss(s, t, gt, ctx()), {"gt": ref_gt(s, gt), "sc": 50 * sc, "hint": 7 * hint})


def test_sckd_defaults_follow_the_published_code(batch):
    """zero diagonal (torchmetrics' default), batchmean KL on the 1-d c, canonical q, identity-or-conv adaptor;
    and the diagonal matters: keeping cos = 1 there gives another loss."""
    s, t, gt = batch
    p = resolved_params("sckd")
    assert (p["zero_diagonal"], p["kl_reduction"], p["divergence"], p["sp_quat"], p["adaptor"]) == \
        (True, "batchmean", "kl", "canonical", "auto")
    def sc(**params):
        return float(built("sckd", batch, **params).loss(s, t, gt, ctx())["sc"].detach())

    default, with_diagonal, summed = sc(), sc(zero_diagonal=False), sc(kl_reduction="sum")
    assert abs(default - with_diagonal) > 1e-3 * default
    assert summed == pytest.approx(B * default, rel=1e-9)


def test_pose_similarity_nearest_ignores_the_quaternion_sign(batch):
    """S_P with quat "nearest" is the same whichever sign a quaternion is stored with; "canonical" is not."""
    from kdbench.methods.functional import pose_self_similarity

    _, _, gt = batch
    flipped = gt.q * torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=gt.q.dtype).unsqueeze(1)
    for quat, invariant in (("nearest", True), ("canonical", False)):
        a = pose_self_similarity(gt.xyz, gt.q, quat, True)
        b = pose_self_similarity(gt.xyz, flipped, quat, True)
        assert torch.allclose(a, b) == invariant, quat
        poses = np.concatenate([np_(gt.xyz), np_(flipped)], axis=1)
        assert np.allclose(np_(b), ref_pose_sim(poses, True, quat))
        assert torch.all(torch.diagonal(a) == 0)


def ref_smooth_l1(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a.ravel() - b.ravel())
    return float(np.mean([0.5 * x * x if x < 1 else x - 0.5 for x in d]))


def ref_rkd(fs: np.ndarray, ft: np.ndarray) -> tuple[float, float]:
    """RKD by loops: normalised pairwise distances, and cosines of the angle at vertex a between b and c."""
    def dist(f):
        b = len(f)
        d = np.array([[np.linalg.norm(f[i] - f[j]) for j in range(b)] for i in range(b)])
        return d / np.mean([d[i, j] for i in range(b) for j in range(b) if i != j])

    def angle(f):
        b = len(f)
        out = np.zeros((b, b, b))
        for a in range(b):
            for i in range(b):
                for k in range(b):
                    u, v = f[i] - f[a], f[k] - f[a]
                    if i != a and k != a:
                        out[a, i, k] = ref_cos(u, v)
        return out

    fs, ft = fs.reshape(len(fs), -1), ft.reshape(len(ft), -1)
    return ref_smooth_l1(dist(fs), dist(ft)), ref_smooth_l1(angle(fs), angle(ft))


def ref_pkt(fs: np.ndarray, ft: np.ndarray, eps: float = 1e-7) -> float:
    def kernel(f):
        f = f.reshape(len(f), -1)
        f = f / (np.linalg.norm(f, axis=1, keepdims=True) + eps)
        k = np.array([[(f[i] @ f[j] + 1) / 2 for j in range(len(f))] for i in range(len(f))])
        return k / k.sum(1, keepdims=True)

    p_s, p_t = kernel(fs), kernel(ft)
    b = len(fs)
    return float(np.mean([p_t[i, j] * math.log((p_t[i, j] + eps) / (p_s[i, j] + eps))
                          for i in range(b) for j in range(b)]))


def ref_at(fs: np.ndarray, ft: np.ndarray) -> float:
    def at(f):
        a = np.array([np.mean(f[i] ** 2, axis=0).ravel() for i in range(len(f))])
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return float(np.mean((at(fs) - at(ft)) ** 2))


def test_rkd_pkt_at_match_loops(batch):
    s, t, gt = batch
    fs4, ft4 = np_(s.features["layer4"]), np_(t.features["layer4"])
    fs_p, ft_p = np_(s.features["pool"]), np_(t.features["pool"])
    d, a = ref_rkd(fs_p, ft_p)
    assert_terms(create_method("rkd").loss(s, t, gt, ctx()),
                 {"gt": ref_gt(s, gt), "distance": 25 * d, "angle": 50 * a})
    assert_terms(create_method("pkt", {"layers": "layer4"}).loss(s, t, gt, ctx()),
                 {"gt": ref_gt(s, gt), "pkt": 30000 * ref_pkt(fs4, ft4)})
    # AT needs equal spatial sizes only: the teacher's channel counts differ here.
    at = sum(ref_at(np_(s.features[n]), np_(t.features[n])) for n in ("layer2", "layer4"))
    m = create_method("at", {"layers": "layer2,layer4"})
    m.setup(s, t)
    assert_terms(m.loss(s, t, gt, ctx()), {"gt": ref_gt(s, gt), "attention": 1000 * at})
    # Maps of different sizes: the larger is average-pooled to the smaller, as RepDistiller's at_loss does.
    small = PoseOutput(t.xyz, t.q, {**t.features, "layer2": t.features["layer2"][:, :, :2, :2]})
    fs2 = np_(s.features["layer2"])
    b, c, h, w = fs2.shape
    assert h % 2 == 0 and w % 2 == 0 and h > 2
    pooled = fs2.reshape(b, c, 2, h // 2, 2, w // 2).mean(axis=(3, 5))
    at_small = ref_at(pooled, np_(small.features["layer2"])) + ref_at(np_(s.features["layer4"]), ft4)
    assert_terms(m.loss(s, small, gt, ctx()), {"gt": ref_gt(s, gt), "attention": 1000 * at_small})


def test_pkt_zeroes_nan_features_as_the_reference_does(batch):
    """RepDistiller's PKT sets NaN entries of the normalised features to 0 (a 0/0 row with eps = 0)."""
    from kdbench.methods.functional import pkt

    s, t, _ = batch
    fs, ft = s.features["pool"].clone(), t.features["pool"].clone()
    fs[0] = float("nan")
    got = pkt(fs, ft)
    zeroed = np_(fs).copy()
    zeroed[0] = 0.0  # what e[e != e] = 0 leaves of that row
    assert torch.isfinite(got) and float(got) == pytest.approx(ref_pkt(zeroed, np_(ft)), rel=1e-5)


def test_sc_divergence_takes_the_teacher_as_target():
    gen = torch.Generator().manual_seed(3)
    c_s, c_t = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    kl = float(sc_divergence(c_s, c_t, "kl", "sum"))
    assert kl == pytest.approx(ref_kl(np_(c_t), np_(c_s)), rel=1e-9)
    assert float(sc_divergence(c_s, c_t, "kl")) == pytest.approx(kl / 6, rel=1e-9)  # batchmean: / b
    assert abs(kl - ref_kl(np_(c_s), np_(c_t))) > 1e-3  # KL is asymmetric: the reverse differs
    assert float(sc_divergence(c_t, c_t, "kl")) == pytest.approx(0.0, abs=1e-12)


def test_sc_divergence_resolves_the_tiny_kl_of_sckds_defaults():
    """At SCKD's defaults L_sc is 1e-7 to 1e-10: computed in float32 it would be rounding noise."""
    gen = torch.Generator().manual_seed(5)
    c_t = torch.rand(32, generator=gen) * 0.5 + 0.5
    c_s = c_t + 1e-4 * torch.randn(32, generator=gen)
    exact = ref_kl(np_(c_t), np_(c_s), "batchmean")
    got = sc_divergence(c_s, c_t, "kl")
    assert got.dtype == torch.float32  # the value is float32 again, it was computed in float64
    assert 0 < exact < 1e-8 and float(got) == pytest.approx(exact, rel=1e-4)


def test_relational_losses_run_in_float32_under_autocast():
    """Under AMP, Gram matrices of wide layers would overflow float16 / lose bfloat16 precision."""
    gen = torch.Generator().manual_seed(4)
    f_s, f_t = torch.rand(2, B, 64, 14, 14, generator=gen) * 3
    q = torch.nn.functional.normalize(torch.randn(B, 4, generator=gen), dim=1)
    gt = GroundTruth(torch.randn(B, 3, generator=gen), q)
    s_out = PoseOutput(torch.zeros(B, 3), q, {"layer2": f_s})
    t_out = PoseOutput(torch.zeros(B, 3), q, {"layer2": f_t})
    for m in (create_method("similarity", {"layers": "layer2"}),
              create_method("sckd", {"sc_layers": "layer2", "hint_layers": ""})):
        expected = {k: v.detach() for k, v in m.loss(s_out, t_out, gt, ctx()).items()}
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = m.loss(s_out, t_out, gt, ctx())
        for k in ("similarity", "sc"):
            if k in got:
                assert got[k].dtype == torch.float32
                assert torch.allclose(got[k], expected[k], rtol=1e-5, atol=1e-7), k


def attentive_ready(batch, eta: float, **params):
    m = built("attentive", batch, **params)
    m.eta.fill_(eta)
    return m


@pytest.mark.parametrize("clamp", [True, False])
def test_attentive_joint_matches_loops(batch, clamp):
    s, t, gt = batch
    e = ref_l(np_(t.xyz), np_(t.q), np_(gt.xyz), np_(gt.q))
    eta = (max(e) - min(e)) * 0.9  # below the spread, so some 1 - e/eta are negative and clamping matters
    m = attentive_ready(batch, eta, schedule="joint", alpha=0.4, hint_layer="layer4", phi_clamp=clamp)
    phi = [1 - ei / eta for ei in e]
    assert any(p < 0 for p in phi)
    phi = [min(max(p, 0.0), 1.0) for p in phi] if clamp else phi
    imit = ref_l(np_(s.xyz), np_(s.q), np_(t.xyz), np_(t.q))
    diff = ref_adapt(m, "layer4", np_(s.features["layer4"])) - np_(t.features["layer4"])
    aht = np.mean([phi[i] * np.mean(diff[i] ** 2) for i in range(B)])  # element mean, as hint and sckd
    expected = {"gt": 0.4 * ref_gt(s, gt), "imitation": 0.6 * np.mean([phi[i] * imit[i] for i in range(B)]),
                "aht": 100.0 * aht}
    assert_terms(m.loss(s, t, gt, ctx()), expected)


def test_attentive_two_stage_terms(batch):
    s, t, gt = batch
    e = ref_l(np_(t.xyz), np_(t.q), np_(gt.xyz), np_(gt.q))
    eta = 2 * max(e)
    m = attentive_ready(batch, eta)
    phi = [1 - ei / eta for ei in e]
    diff = ref_adapt(m, "layer4", np_(s.features["layer4"])) - np_(t.features["layer4"])
    aht = np.mean([phi[i] * np.mean(diff[i] ** 2) for i in range(B)])
    assert_terms(m.loss(s, t, gt, ctx(0, 10)), {"aht": aht})
    imit = ref_l(np_(s.xyz), np_(s.q), np_(t.xyz), np_(t.q))
    assert_terms(m.loss(s, t, gt, ctx(2, 10)),
                 {"gt": 0.5 * ref_gt(s, gt),
                  "imitation": 0.5 * np.mean([phi[i] * imit[i] for i in range(B)])})


# ---------------------------------------------------------------- eta, setup, state

def test_eta_is_max_minus_min_of_teacher_errors():
    gen = torch.Generator().manual_seed(5)
    batches, errors = [], []
    for _ in range(3):  # a generator, like the runner's pass over the training set
        t, gt = rand_output(gen), rand_gt(gen)
        batches.append((t, gt))
        errors += ref_l(np_(t.xyz), np_(t.q), np_(gt.xyz), np_(gt.q))
    m = create_method("attentive")
    assert torch.isnan(m.eta)
    m.prepare((b for b in batches), PoseLoss(BETA))
    assert float(m.eta) == pytest.approx(max(errors) - min(errors), rel=1e-6)
    assert "eta" in m.state_dict()
    with pytest.raises(KdbenchError, match="no spread"):
        m.prepare([(batches[0][0], GroundTruth(batches[0][0].xyz, batches[0][0].q))], PoseLoss(BETA))


def test_attentive_refuses_to_train_without_eta(batch):
    s, t, gt = batch
    with pytest.raises(RuntimeError, match="prepare"):
        built("attentive", batch).loss(s, t, gt, ctx())


@pytest.mark.parametrize("name", ["hint", "sckd", "attentive"])
def test_loss_before_setup_is_a_clear_error(batch, name):
    s, t, gt = batch
    m = create_method(name)
    if name == "attentive":
        m.eta.fill_(1.0)
    with pytest.raises(RuntimeError, match="setup"):
        m.loss(s, t, gt, ctx())


@pytest.mark.parametrize("name", ["hint", "sckd", "attentive"])
def test_state_dict_survives_resume(batch, name):
    s, t, gt = batch
    m = built(name, batch)
    if name == "attentive":
        m.prepare([(t, gt)], PoseLoss(BETA))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    fresh = create_method(name)
    fresh.setup(s, t)  # the runner's resume order: setup on the first batch, then load_state_dict
    fresh.double().load_state_dict(m.state_dict())
    for (k, a), (_, b) in zip(m.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("adaptor,modules", [
    ("auto", (torch.nn.Conv2d, torch.nn.ReLU)),
    ("conv", (torch.nn.Conv2d, torch.nn.ReLU)),
    ("conv-bn", (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU)),
])
def test_adaptor_shapes_end_in_relu(adaptor, modules):
    """Every tapped target is post-ReLU, so every adaptor with weights ends in one (FitNets, ConvReg, SCKD)."""
    gen = torch.Generator().manual_seed(0)
    s, t = rand_output(gen), rand_output(gen, teacher=True)
    m = create_method("hint", {"layers": "layer2,pool", "adaptor": adaptor})
    m.setup(s, t)
    assert tuple(type(x) for x in m.adaptors["layer2"]) == modules
    assert m.adaptors["layer2"][0].weight.shape == (5, 6, 1, 1) and m.adaptors["layer2"][0].bias is None
    flat_modules = tuple({torch.nn.Conv2d: torch.nn.Linear, torch.nn.BatchNorm2d: torch.nn.BatchNorm1d}.get(x, x)
                         for x in modules)
    assert tuple(type(x) for x in m.adaptors["pool"]) == flat_modules
    assert m.adaptors["pool"][0].weight.shape == (10, 8)
    for name in ("layer2", "pool"):
        assert bool((m.adaptors[name](s.features[name]) >= 0).all())
    bad = PoseOutput(t.xyz, t.q, {"layer2": torch.zeros(B, 5, 3, 3), "pool": t.features["pool"]})
    with pytest.raises(KdbenchError, match="differ in size"):
        create_method("hint", {"layers": "layer2", "adaptor": adaptor, "resize": "none"}).setup(s, bad)
    resized = create_method("hint", {"layers": "layer2", "adaptor": adaptor})  # resize=bilinear, the default
    resized.setup(s, bad)
    assert resized.adaptors["layer2"](s.features["layer2"]).shape == (B, 5, 3, 3)


def test_identity_adaptor_needs_equal_shapes(batch):
    s, t, _ = batch
    with pytest.raises(KdbenchError, match="adaptor=identity needs equal widths.*use adaptor=auto or conv"):
        create_method("hint", {"adaptor": "identity"}).setup(s, t)
    with pytest.raises(KdbenchError, match="auto, identity, conv, conv-bn"):
        create_method("sckd", {"adaptor": "mlp"})


# ---------------------------------------------------------------- gradients on real networks

IMG = 32


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return PoseNet("resnet18", dropout=0.0), PoseNet("resnet34", dropout=0.0)


def real_batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, IMG, IMG, generator=gen)
    q = torch.nn.functional.normalize(torch.randn(B, 4, generator=gen), dim=1)
    return x, GroundTruth(torch.randn(B, 3, generator=gen), q * torch.sign(q[:, :1]))


def prepared(name: str, student, teacher, x, gt, **params):
    m = create_method(name, params)
    s_out, t_out = student(x, taps=m.student_taps()), teacher(x, taps=m.teacher_taps())
    m.setup(s_out, t_out)
    if m.needs_prepare:
        with torch.no_grad():  # one batch with zero error: eta = the largest error, so every Phi_i < 1
            t_out = teacher(x)
            m.prepare([(t_out, GroundTruth(t_out.xyz, t_out.q)), (t_out, gt)], PoseLoss(BETA))
    return m


@pytest.mark.parametrize("name,params", [("vanilla", {}), ("attentive", {"schedule": "joint"}),
                                         ("similarity", {}), ("hint", {}), ("sckd", {}), ("rkd", {}),
                                         ("pkt", {}), ("at", {}), ("sckd", {"adaptor": "conv"}),
                                         ("hint", {"layers": "layer2", "adaptor": "conv-bn"})])
def test_gradients_reach_student_and_adaptors_never_teacher(nets, name, params):
    student, teacher = nets
    student.train()
    teacher.eval()
    student.zero_grad()
    teacher.zero_grad()
    x, gt = real_batch()
    m = prepared(name, student, teacher, x, gt, **params)
    # The teacher runs with grad enabled here: the methods themselves must not send gradients into it.
    terms = m.loss(student(x, taps=m.student_taps()), teacher(x, taps=m.teacher_taps()), gt, ctx(5, 10))
    sum(terms.values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.trunk.conv1.weight.grad.abs().sum() > 0
    assert student.fc_q.weight.grad.abs().sum() > 0
    for p in m.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_sckd_term_gradients_on_a_resnet34_to_resnet18_pair(nets):
    """Per-term gradients on the student: the hint reaches layer4 unchanged (no adaptor at 512 = 512:
    d(alpha MSE)/d f_s = 2 alpha (f_s - f_t) / N), and sigma * SC reaches only the layers up to layer2."""
    student, teacher = nets
    student.train()
    x, gt = real_batch(3)
    m = prepared("sckd", student, teacher, x, gt, alpha=7.0)
    assert list(m.parameters()) == []
    with torch.no_grad():
        t_out = teacher(x, taps=m.teacher_taps())
    grads = {}
    for term in ("hint", "sc"):
        student.zero_grad()
        s_out = student(x, taps=m.student_taps())
        s_out.features["layer4"].retain_grad()
        m.loss(s_out, t_out, gt, ctx())[term].backward()
        grads[term] = {"layer4_map": s_out.features["layer4"].grad,
                       **{n: p.grad for n, p in student.named_parameters()}}
        f_s, f_t = np_(s_out.features["layer4"]), np_(t_out.features["layer4"])
        if term == "hint":
            assert np.allclose(np_(grads[term]["layer4_map"]), 2 * 7.0 * (f_s - f_t) / f_s.size, atol=1e-9)
    sc = grads["sc"]
    assert sc["trunk.layer2.0.conv1.weight"].abs().sum() > 0 and sc["trunk.conv1.weight"].abs().sum() > 0
    for name in ("trunk.layer3.0.conv1.weight", "trunk.layer4.0.conv1.weight", "fc_xyz.weight"):
        assert sc[name] is None or sc[name].abs().sum() == 0, name
    assert grads["hint"]["trunk.layer4.0.conv1.weight"].abs().sum() > 0 and grads["hint"]["fc_q.weight"] is None


def test_embed_tap_is_taken_before_dropout():
    """The embed feature is the head's hidden layer after ReLU and before Dropout: un-noised in training."""
    torch.manual_seed(0)
    net = PoseNet("resnet18", dropout=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    a = net(x, taps=("pool", "embed"))
    b = net(x, taps=("pool", "embed"))
    expected = np.maximum(np_(a.features["pool"]) @ np_(net.head[0].weight).T + np_(net.head[0].bias), 0.0)
    # BatchNorm in training mode gives the same output for the same batch; dropout differs per call.
    assert np.allclose(np_(a.features["embed"]), expected, atol=1e-5)
    assert torch.equal(a.features["embed"], b.features["embed"])
    assert not torch.equal(a.xyz, b.xyz)  # dropout is still applied on the way to the pose


@pytest.mark.parametrize("name,params", [("hint", {"adaptor": "conv-bn"}), ("sckd", {"adaptor": "conv"}),
                                         ("attentive", {"schedule": "joint", "adaptor": "conv"})])
def test_adaptors_train_and_persist_across_steps(nets, name, params):
    student, teacher = nets
    x, gt = real_batch(1)
    m = prepared(name, student, teacher, x, gt, **params)
    layer = m.student_taps()[-1]
    adaptor = m.adaptors[layer]
    before = [p.detach().clone() for p in adaptor.parameters()]
    assert before
    opt = torch.optim.Adam(list(student.parameters()) + list(m.parameters()), lr=1e-3)
    for step in range(2):
        m.setup(student(x, taps=m.student_taps()), teacher(x, taps=m.teacher_taps()))  # idempotent
        with torch.no_grad():
            t_out = teacher(x, taps=m.teacher_taps())
        terms = m.loss(student(x, taps=m.student_taps()), t_out, gt, ctx(step, 10))
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
        assert m.adaptors[layer] is adaptor
    assert all(not torch.equal(a, p) for a, p in zip(before, adaptor.parameters()))


# ---------------------------------------------------------------- two-stage schedule

@pytest.mark.parametrize("layer", ["stem", "layer2", "layer4", "pool", "embed"])
def test_stage2_freezes_exactly_what_stage1_trained(nets, layer):
    student, _ = nets
    m = create_method("attentive", {"hint_layer": layer, "stage2": "after-hint"})
    epochs = 10
    units = set(student_units(student))
    frozen1, frozen2 = set(m.frozen(student, 0, epochs)), set(m.frozen(student, epochs - 1, epochs))
    trained1 = units - frozen1
    assert trained1 == frozen2
    assert frozen1.isdisjoint(frozen2) and frozen1 | frozen2 == units
    assert {"fc_xyz", "fc_q"} <= frozen1
    assert ("head" in frozen1) == (layer != "embed")
    # Every parameter of the student belongs to exactly one unit: nothing trains in both stages or neither.
    names = [n for n, _ in student.named_parameters()]
    assert all(sum(n.startswith(u + ".") for u in units) == 1 for n in names)


def test_stage_lengths():
    m = create_method("attentive")
    assert [m.stage1_epochs(e) for e in (1, 2, 5, 10, 12, 13, 500)] == [0, 1, 1, 2, 2, 3, 100]
    assert [m.in_stage1(e, 10) for e in range(4)] == [True, True, False, False]
    assert create_method("attentive", {"schedule": "joint"}).frozen(PoseNet("resnet18"), 0, 10) == []
    # stage 2 always gets at least one epoch, whatever the fraction
    big = create_method("attentive", {"stage1": 0.99})
    assert all(big.stage1_epochs(e) == e - 1 for e in range(2, 30))


def test_stage2_trains_the_whole_student_by_default(nets):
    """With the hint at layer4, the paper's stage 2 trains only the head; the default trains everything."""
    student, _ = nets
    default = create_method("attentive")
    assert default.stage2 == "all"
    assert default.frozen(student, 5, 10) == []
    paper = create_method("attentive", {"stage2": "after-hint"})
    assert set(paper.frozen(student, 5, 10)) == {u for u in student_units(student) if u.startswith("trunk.")}


def test_one_epoch_skips_stage1_and_says_so(batch, nets):
    """epochs = 1: stage 1 would take every epoch and the head would never train; it is skipped instead."""
    s, t, gt = batch
    m = attentive_ready(batch, 1.0)
    with pytest.warns(UserWarning, match="epochs = 1 stage 1 .* is skipped"):
        assert m.frozen(nets[0], 0, 1) == []
    assert not m.in_stage1(0, 1)
    assert set(m.loss(s, t, gt, ctx(0, 1))) == {"gt", "imitation"}
    with pytest.warns(UserWarning):
        assert create_method("attentive", {"stage2": "after-hint"}).frozen(nets[0], 0, 1) != []


def test_frozen_modules_do_not_change_in_stage2(nets):
    """The runner's contract, emulated: frozen modules get requires_grad False and eval() for the epoch."""
    student, teacher = PoseNet("resnet18"), nets[1]
    x, gt = real_batch(2)
    m = prepared("attentive", student, teacher, x, gt, hint_layer="layer2", stage2="after-hint")
    names = m.frozen(student, 5, 10)
    opt = torch.optim.Adam(list(student.parameters()) + list(m.parameters()), lr=1e-2)
    student.train()
    for n in names:
        student.get_submodule(n).eval().requires_grad_(False)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    for _ in range(2):
        with torch.no_grad():
            t_out = teacher(x, taps=m.teacher_taps())
        terms = m.loss(student(x, taps=m.student_taps()), t_out, gt, ctx(5, 10))
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    after = student.state_dict()
    frozen_keys = [k for k in before if any(k.startswith(n + ".") for n in names)]
    assert any("running_mean" in k for k in frozen_keys)
    assert all(torch.equal(before[k], after[k]) for k in frozen_keys)
    key = "trunk.layer3.0.bn1.running_mean"  # after the hint layer: trains (and tracks statistics) in stage 2
    assert not torch.equal(before[key], after[key])
    assert not torch.equal(before["fc_xyz.weight"], after["fc_xyz.weight"])


# ---------------------------------------------------------------- hyperparameters and the CLI

def test_set_overrides_parse_with_types():
    m = create_method("sckd", {"sigma": "50", "sc_layers": "3,4"})
    assert m.sigma == 50.0 and isinstance(m.sigma, float)
    assert m.sc_layers == ("layer2", "layer3")
    assert m.student_taps() == ("layer2", "layer3", "layer4")
    assert create_method("attentive", {"phi_clamp": "false", "schedule": "joint"}).phi_clamp is False
    assert resolved_params("similarity", {"layers": "5,6"}) == {"gamma": 3000.0, "layers": ["layer4", "pool"]}


@pytest.mark.parametrize("name,params,match", [
    ("sckd", {"sigmaa": 1}, "valid: sigma, alpha, sc_layers, hint_layers, divergence, kl_reduction, "
                            "zero_diagonal, sp_quat, adaptor"),
    ("sckd", {"kl_reduction": "mean"}, "batchmean, sum"),
    ("attentive", {"stage2": "head"}, "all, after-hint"),
    ("sckd", {"sigma": "lots"}, "not a valid float"),
    ("sckd", {"divergence": "js"}, "kl, mse"),
    ("hint", {"layers": "layer9"}, "unknown layer"),
    ("vanilla", {"alpha": 1.5}, r"\[0, 1\]"),
    ("attentive", {"hint_layer": "layer3,layer4"}, "exactly 1"),
    ("attentive", {"stage1": 1.0}, "strictly between"),
    ("at", {"layers": "layer3,pool"}, "no spatial map"),
    ("sckdd", {}, "Did you mean sckd.*Registered: at, attentive, baseline, hint, pkt, rkd, sckd, similarity, vanilla"),
])
def test_bad_hyperparameters_are_clear_errors(name, params, match):
    with pytest.raises(KdbenchError, match=match):
        create_method(name, params)


def test_taps_and_teacher_flags():
    assert create_method("baseline").needs_teacher is False
    for name in BUILTINS[1:]:
        assert create_method(name).needs_teacher
    assert create_method("attentive").needs_prepare
    assert create_method("vanilla").student_taps() == ()
    assert create_method("hint", {"layers": "2,5"}).teacher_taps() == ("layer1", "layer4")


def test_methods_command_lists_builtins_with_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    heads = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert heads[:len(BUILTINS)] == list(BUILTINS)
    block = out.split("\nsckd ")[1].split("\n\n")[0]
    for key, default in [("sigma", "100.0"), ("alpha", "100.0"), ("sc_layers", "layer2"),
                         ("hint_layers", "layer4"), ("divergence", "kl"), ("kl_reduction", "batchmean"),
                         ("zero_diagonal", "true"), ("sp_quat", "canonical"), ("adaptor", "auto")]:
        assert any(line.split()[:1] == [key] and default in line.split() for line in block.splitlines()), key
    attentive = out.split("\nattentive ")[1].split("\n\n")[0]
    assert any(line.split()[:3] == ["stage2", "str", "all"] for line in attentive.splitlines())
    assert "[all | after-hint]" in " ".join(attentive.split()) and "[auto | identity | conv | conv-bn]" in block
    assert "3000.0" in out and "two-stage" in out
    assert max(len(line) for line in out.splitlines()) <= 100
