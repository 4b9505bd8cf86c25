"""Pose conventions and errors: quaternions are (w, x, y, z), unit norm, sign-canonical (w >= 0)."""

from __future__ import annotations

import numpy as np

ACCURACY_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def canonical_quat(q: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Normalise quaternion(s) (..., 4) and pick the sign with w >= 0.

    q and -q are one rotation; when w == 0 the first non-zero component is made positive, so that
    both signs always map to the same representative.
    """
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    first = np.argmax(np.abs(q) > eps, axis=-1)[..., None]
    lead = np.take_along_axis(q, first, axis=-1)
    return np.where(lead < 0, -q, q)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrix (..., 3, 3) of unit quaternion(s) (..., 4) in (w, x, y, z) order."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    r = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return r.reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """Sign-canonical unit quaternion(s) (..., 4) of rotation matrix(es) (..., 3, 3).

    Shepperd's method: picks the largest of w, x, y, z as pivot, so it stays accurate near 180 degrees.
    """
    r = np.asarray(r, dtype=np.float64)
    flat = r.reshape(-1, 3, 3)
    out = np.empty((flat.shape[0], 4))
    for i, m in enumerate(flat):
        tr = m[0, 0] + m[1, 1] + m[2, 2]
        diag = (tr, m[0, 0], m[1, 1], m[2, 2])
        k = int(np.argmax(diag))
        if k == 0:
            s = 2.0 * np.sqrt(max(1.0 + tr, 1e-300))
            q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
        elif k == 1:
            s = 2.0 * np.sqrt(max(1.0 + m[0, 0] - m[1, 1] - m[2, 2], 1e-300))
            q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
        elif k == 2:
            s = 2.0 * np.sqrt(max(1.0 + m[1, 1] - m[0, 0] - m[2, 2], 1e-300))
            q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
        else:
            s = 2.0 * np.sqrt(max(1.0 + m[2, 2] - m[0, 0] - m[1, 1], 1e-300))
            q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
        out[i] = q
    return canonical_quat(out).reshape(r.shape[:-2] + (4,))


def rigid_transform_problem(m: np.ndarray, tol: float = 1e-3) -> str | None:
    """Why a 4x4 matrix is not a rigid transform, or None when it is one."""
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (4, 4):
        return f"expected a 4x4 matrix, got shape {m.shape}"
    if not np.all(np.isfinite(m)):
        return "it contains non-finite values"
    if not np.allclose(m[3], [0, 0, 0, 1], atol=tol):
        return f"its last row is {m[3].tolist()}, expected [0, 0, 0, 1]"
    r = m[:3, :3]
    err = np.abs(r @ r.T - np.eye(3)).max()
    if err > tol:
        return f"its 3x3 block is not orthonormal (max |R R^T - I| = {err:.3g})"
    det = np.linalg.det(r)
    if det < 0:
        return f"its 3x3 block is a reflection (det = {det:.3g})"
    return None


def translation_errors(xyz_pred: np.ndarray, xyz_gt: np.ndarray) -> np.ndarray:
    """Euclidean distance between predicted and true positions, per sample (metres)."""
    return np.linalg.norm(np.asarray(xyz_pred, float) - np.asarray(xyz_gt, float), axis=-1)


def rotation_errors_deg(q_pred: np.ndarray, q_gt: np.ndarray) -> np.ndarray:
    """Angle of the relative rotation, per sample (degrees): 2 acos(|<q_pred, q_gt>|), both normalised."""
    a = np.asarray(q_pred, float)
    b = np.asarray(q_gt, float)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    d = np.clip(np.abs(np.sum(a * b, axis=-1)), 0.0, 1.0)
    return np.degrees(2.0 * np.arccos(d))


def pose_metrics(err_t: np.ndarray, err_r: np.ndarray) -> dict[str, float]:
    """The evaluation protocol of DATASETS.md: medians, means and accuracy shares."""
    err_t = np.asarray(err_t, float)
    err_r = np.asarray(err_r, float)
    out = {
        "median_t": float(np.median(err_t)),
        "median_r": float(np.median(err_r)),
        "mean_t": float(np.mean(err_t)),
        "mean_r": float(np.mean(err_r)),
        "n_test": float(err_t.size),
    }
    for t, r in ACCURACY_THRESHOLDS:
        out[f"acc_{t:g}m_{r:g}deg"] = float(np.mean((err_t < t) & (err_r < r)))
    return out
