"""Quaternion/matrix conversions and pose errors, including property tests."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kdbench.poses import (
    canonical_quat,
    matrix_to_quat,
    pose_metrics,
    quat_to_matrix,
    rigid_transform_problem,
    rotation_errors_deg,
    translation_errors,
)

quats = arrays(np.float64, 4, elements=st.floats(-1, 1, allow_nan=False)).filter(lambda q: np.linalg.norm(q) > 1e-2)


@settings(max_examples=200, deadline=None)
@given(quats)
def test_quat_matrix_round_trip(q):
    r = quat_to_matrix(q)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-9)
    assert np.isclose(np.linalg.det(r), 1.0)
    q2 = matrix_to_quat(r)
    assert q2[0] >= -1e-12
    assert np.allclose(q2, canonical_quat(q), atol=1e-7)


@settings(max_examples=100, deadline=None)
@given(quats, st.floats(0.0, 179.0), arrays(np.float64, 3, elements=st.floats(-1, 1)).filter(
    lambda a: np.linalg.norm(a) > 1e-2))
def test_rotation_error_of_known_rotation(q, angle, axis):
    axis = axis / np.linalg.norm(axis)
    half = np.radians(angle) / 2
    delta = np.concatenate([[np.cos(half)], np.sin(half) * axis])
    r = quat_to_matrix(q) @ quat_to_matrix(delta)
    err = rotation_errors_deg(matrix_to_quat(r)[None], canonical_quat(q)[None])[0]
    assert abs(err - angle) < 1e-4


@settings(max_examples=100, deadline=None)
@given(quats)
def test_canonical_sign_is_unique(q):
    assert np.allclose(canonical_quat(q), canonical_quat(-q))


def test_rotation_error_ignores_sign_and_scale():
    q = canonical_quat(np.array([0.3, -0.2, 0.9, 0.1]))
    assert rotation_errors_deg(-2.5 * q[None], q[None])[0] < 1e-5


def test_translation_error_is_euclidean():
    assert np.allclose(translation_errors(np.array([[3.0, 4.0, 0.0]]), np.zeros((1, 3))), [5.0])


def test_metrics_medians_and_accuracy_shares():
    m = pose_metrics(np.array([0.1, 0.3, 0.6, 6.0]), np.array([1.0, 4.0, 3.0, 1.0]))
    assert m["median_t"] == pytest.approx(0.45) and m["median_r"] == pytest.approx(2.0)
    assert m["acc_0.25m_2deg"] == 0.25  # only (0.1, 1.0)
    assert m["acc_0.5m_5deg"] == 0.5  # (0.1, 1.0), (0.3, 4.0)
    assert m["acc_5m_10deg"] == 0.75  # all but 6 m


def test_rigid_transform_problems_are_named():
    good = np.eye(4)
    assert rigid_transform_problem(good) is None
    scaled = np.eye(4)
    scaled[0, 0] = 2
    assert "orthonormal" in rigid_transform_problem(scaled)
    flip = np.diag([1.0, 1.0, -1.0, 1.0])
    assert "reflection" in rigid_transform_problem(flip)
    bottom = np.eye(4)
    bottom[3, 0] = 1
    assert "last row" in rigid_transform_problem(bottom)
