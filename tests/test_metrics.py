"""Each metric of DESIGN §6 against a hand computation on tiny arrays."""

import math

import numpy as np
import pytest

from imitator import metrics


def test_divergence_regression_is_squared_error_summed_over_outputs():
  a = np.array([[1.0, 2.0], [0.0, 0.0]])
  a_hat = np.array([[0.0, 2.0], [3.0, -1.0]])
  np.testing.assert_allclose(metrics.divergence("regression", a, a_hat), [1.0, 10.0])


def test_divergence_classification_is_kl_teacher_to_imitator():
  a = np.array([[0.5, 0.5], [1.0, 0.0]])
  a_hat = np.array([[0.25, 0.75], [0.5, 0.5]])
  kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
  kl1 = 1.0 * math.log(1.0 / 0.5)  # 0 * log 0 terms vanish
  np.testing.assert_allclose(metrics.divergence("classification", a, a_hat), [kl0, kl1],
                             rtol=1e-6)


def test_step_error_averages_over_the_batch():
  a = np.zeros((2, 3, 2, 1))  # [P, T, B, out]
  a_hat = np.ones((2, 3, 2, 1))
  a_hat[0, 1, 0, 0] = 3.0  # errors 9 and 1 in that step -> mean 5
  err = metrics.step_error("regression", a, a_hat)
  assert err.shape == (2, 3)
  np.testing.assert_allclose(err[0], [1.0, 5.0, 1.0])


def test_task_loss_and_argmax_agreement():
  pred = np.array([[[0.7, 0.3], [0.2, 0.8]]])  # [T=1, B=2, C]
  y = np.array([[0, 0]])
  np.testing.assert_allclose(metrics.task_loss("classification", pred, y),
                             [-(math.log(0.7) + math.log(0.2)) / 2], rtol=1e-6)
  np.testing.assert_allclose(
      metrics.task_loss("regression", np.array([[[1.0], [3.0]]]), np.array([[[0.0], [1.0]]])),
      [0.5 * (1 + 4) / 2])
  other = np.array([[[0.6, 0.4], [0.9, 0.1]]])
  np.testing.assert_allclose(metrics.argmax_agreement(pred, other), [0.5])


def test_nie_window_and_bootstrap_ci():
  err = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
  chance = np.array([[2.0, 2.0, 2.0, 2.0], [4.0, 4.0, 4.0, 4.0]])
  # Horizon 4 with t_train 2: the last two steps.
  steps = metrics.window(4, 2)
  assert (steps.start, steps.stop) == (2, 4)
  nie, (lo, hi) = metrics.nie_with_ci(err, chance, steps)
  assert nie == pytest.approx((3 + 4 + 1 + 0) / 4 / ((2 + 2 + 4 + 4) / 4))
  # Two teachers: per-teacher ratios are 3.5/2 and 0.5/4; every resample lies between.
  assert 0.5 / 4 - 1e-9 <= lo <= nie <= hi <= 3.5 / 2 + 1e-9
  assert metrics.window(2, 2) == slice(0, 2)  # at T_train: the whole run


def test_bootstrap_ci_of_identical_teachers_is_a_point():
  lo, hi = metrics.bootstrap_ci(np.full(10, 0.3), np.full(10, 0.6))
  assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)


def test_windowed_nie_and_horizon_to_divergence():
  chance = np.ones((1, 8))
  err = np.array([[0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.6, 0.6]])
  np.testing.assert_allclose(metrics.windowed_nie(err, chance, 2),
                             [0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.4, 0.6])
  # Full 2-step windows ending at H = 2..8: first above 0.1 ends at H = 6 (3 x t_train).
  assert metrics.horizon_to_divergence(err, chance, 0.1, 2, 2) == (6, 3.0)
  assert metrics.horizon_to_divergence(err, chance, 0.25, 2, 2) == (7, 3.5)
  assert metrics.horizon_to_divergence(err, chance, 0.9, 2, 2) == (None, None)
  # A window still filling never counts: a bad first step alone is not a divergence.
  early = np.array([[5.0, 0.0, 0.0, 0.0]])
  assert metrics.horizon_to_divergence(early, np.ones((1, 4)), 0.1, 4, 4) == (4, 1.0)
  assert metrics.horizon_to_divergence(early * 0.01, np.ones((1, 4)), 0.1, 4, 4) == (
      None, None)


def test_task_gap_forgetting_gap_and_hparam_recovery():
  teacher = np.array([[1.0, 1.0], [2.0, 2.0]])
  imitator = np.array([[1.5, 0.5], [2.0, 3.0]])
  gap, _ = metrics.task_gap(teacher, imitator, slice(0, 2))
  assert gap == pytest.approx(((0.5 - 0.5) / 2 + (0 + 1) / 2) / 2)
  fgap, _ = metrics.forgetting_gap(teacher, imitator)
  assert fgap == pytest.approx(((0.5 + 0.5) / 2 + (0 + 1) / 2) / 2)
  rec = metrics.hparam_recovery({"learning_rate": np.array([0.1, 0.2]),
                                 "momentum": np.array([0.5, 0.9])},
                                {"learning_rate": np.array([0.2, 0.2]),
                                 "momentum": np.array([0.6, 0.9])},
                                log_fields=("learning_rate",))
  assert rec["learning_rate"] == pytest.approx(math.log(2) / 2)
  assert rec["momentum"] == pytest.approx(0.05)
