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


def test_nie_figure_steps_and_bootstrap_ci():
  err = np.array([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
  chance = np.array([[2.0, 2.0, 2.0, 2.0], [4.0, 4.0, 4.0, 4.0]])
  # Horizon 4 with t_train 2: the last two steps.
  steps = metrics.figure_steps(4, 2)
  assert (steps.start, steps.stop) == (2, 4)
  nie, (lo, hi) = metrics.nie_with_ci(err, chance, steps)
  assert nie == pytest.approx((3 + 4 + 1 + 0) / 4 / ((2 + 2 + 4 + 4) / 4))
  # Two teachers: per-teacher ratios are 3.5/2 and 0.5/4; every resample lies between.
  assert 0.5 / 4 - 1e-9 <= lo <= nie <= hi <= 3.5 / 2 + 1e-9
  assert metrics.figure_steps(2, 2) == slice(0, 2)  # at T_train: the whole run


def test_median_nie_is_not_pulled_to_zero_by_one_near_divergent_teacher():
  # Four teachers imitated at half their chance error, one whose chance error is 1e6
  # (a teacher near divergence): the pooled NIE collapses, the median does not.
  chance = np.array([[2.0, 2.0]] * 4 + [[1e6, 1e6]])
  err = np.array([[1.0, 1.0]] * 4 + [[1.0, 1.0]])
  steps = metrics.figure_steps(2, 2)
  pooled, _ = metrics.nie_with_ci(err, chance, steps)
  assert pooled == pytest.approx(5 / (8 + 1e6))
  median, (lo, hi) = metrics.median_nie_with_ci(err, chance, steps)
  per_teacher = sorted(e.mean() / c.mean() for e, c in zip(err, chance))
  assert median == pytest.approx(per_teacher[2]) == pytest.approx(0.5)
  assert per_teacher[0] <= lo <= median <= hi <= per_teacher[-1]


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


def test_trailing_sums_count_the_steps_so_far_at_the_start():
  np.testing.assert_allclose(metrics.trailing_sums([[1.0, 2.0, 3.0, 4.0]], 2),
                             [[1.0, 3.0, 5.0, 7.0]])
  np.testing.assert_allclose(metrics.trailing_sums([1.0, 2.0], 5), [1.0, 3.0])


# Two teachers, chance error 1 at every step, window 2 = T_train.
_CHANCE = np.ones((2, 6))
_ERR = np.array([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
                 [1.0, 0.0, 0.0, 0.0, 0.6, 0.0]])


def test_identification_step_of_the_population():
  # Mean error [1, .5, 0, 0, .3, 0]; trailing sums [1, 1.5, .5, 0, .3, .3] over
  # chance sums [1, 2, 2, 2, 2, 2]: NIE [1, .75, .25, 0, .15, .15], <= .25 from step 3.
  assert metrics.identification_step(_ERR, _CHANCE, 2, 2) == (3, 1.5)
  assert metrics.identification_step(_ERR, _CHANCE, 2, 2, threshold=0.1) == (None, None)
  # It must stay below: a curve that dips and comes back up identifies only after.
  dip = np.array([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
  assert metrics.identification_step(dip, np.ones((1, 8)), 2, 4) == (6, 1.5)
  assert metrics.identification_step(np.zeros((1, 3)), np.ones((1, 3)), 2, 2) == (1, 0.5)


def test_identification_step_median_over_teachers():
  # Teacher 0: ratios [1, 1, .5, 0, 0, 0] -> step 4. Teacher 1: [1, .5, 0, 0, .3, .3]
  # ends above .25 -> never. The lower median of [4, inf] is 4; of [4, inf, inf], inf.
  assert metrics.identification_step_median(_ERR, _CHANCE, 2, 2) == (4, 2.0, 0.5)
  three = np.concatenate([_ERR, _ERR[1:]])
  assert metrics.identification_step_median(three, np.ones((3, 6)), 2, 2) == (
      None, None, pytest.approx(1 / 3))
  # A teacher whose windows hold zero chance error (0/0) never counts as identified.
  zero = metrics.identification_step_median(np.zeros((1, 2)), np.zeros((1, 2)), 2, 2)
  assert zero == (None, None, 0.0)


def test_windowed_nie_band_at_grid_steps():
  rng = np.random.default_rng(0)
  err = rng.uniform(0, 1, (16, 40))
  chance = rng.uniform(1, 2, (16, 40))
  steps = np.array([1, 5, 40])
  nie, lo, hi = metrics.windowed_nie_band(err, chance, 8, steps)
  # The population ratio over the trailing window, e.g. at step 40 steps 33..40.
  assert nie[2] == pytest.approx(err[:, 32:].sum() / chance[:, 32:].sum())
  assert nie[0] == pytest.approx(err[:, 0].sum() / chance[:, 0].sum())
  assert np.all(lo <= nie) and np.all(nie <= hi) and np.all(lo < hi)
  # Identical teachers: every resample gives the same ratio.
  same = metrics.windowed_nie_band(np.full((5, 4), 0.3), np.full((5, 4), 0.6), 2, [2, 4])
  np.testing.assert_allclose(same, [[0.5, 0.5]] * 3)


def test_paired_comparison_by_hand():
  err = np.array([[1.0, 1.0], [1.0, 1.0]])
  versus = np.array([[2.0, 2.0], [4.0, 4.0]])
  chance = np.ones((2, 2))
  c = metrics.paired_comparison(err, versus, chance, slice(0, 2))
  assert c["nie_diff"] == pytest.approx(1.0 - 3.0) and c["n_teachers"] == 2
  assert c["nie_ratio"] == pytest.approx(1.0 / 3.0)
  # Resamples: versus mean in {2, 3, 4}, so the difference is in [-3, -1].
  assert -3 - 1e-9 <= c["nie_diff_ci"][0] <= -2 <= c["nie_diff_ci"][1] <= -1 + 1e-9
  assert 0.25 - 1e-9 <= c["nie_ratio_ci"][0] <= c["nie_ratio_ci"][1] <= 0.5 + 1e-9
  # Pairing: teachers differ tenfold, but each one's imitator error is half its
  # baseline's, so every paired resample has ratio 0.5 (unpaired draws would not).
  b = np.random.default_rng(1).uniform(1, 10, (20, 1)) * np.ones((20, 3))
  paired = metrics.paired_comparison(0.5 * b, b, np.ones((20, 3)), slice(1, 3))
  assert paired["nie_ratio_ci"] == pytest.approx([0.5, 0.5])
  assert paired["nie_diff"] == pytest.approx(-0.5 * b.mean())


def test_breaking_strength():
  assert metrics.breaking_strength([4.0, 0.5, 2.0, 1.0], [0.9, 0.1, 0.3, 0.2]) == 2.0
  assert metrics.breaking_strength([0.5, 1.0], [0.1, 0.25]) is None  # not above 0.25
  assert metrics.breaking_strength([0.5, 1.0], [0.1, None]) == 1.0  # blew up
  assert metrics.breaking_strength([0.5, 1.0], [math.nan, 0.1]) == 0.5
  assert metrics.IDENTIFIED_NIE == 0.25


def test_free_running_horizon_counts_steps_after_the_cut_by_hand():
  # Cut at step 2, windows of 2 steps after it, chance 1 everywhere. Teacher 0's errors
  # after the cut [0, 0, .2, .4, .8, .8]: window means from the 2nd step after the cut
  # [0, .1, .3, .6, .8] -> first above .25 at the 4th step after the cut. Teacher 1
  # never passes it (beyond); teacher 2 passes it in its first full window (step 2).
  err = np.array([[9, 9, 0, 0, .2, .4, .8, .8],
                  [9, 9, 0, .1, .1, .1, .2, .2],
                  [9, 9, .9, .9, 0, 0, 0, 0]])
  fr = metrics.free_running_horizon(err, np.ones_like(err), cut=2, width=2, t_train=2)
  assert fr["steps"] == 4 and fr["t_train_multiple"] == 2.0  # median of [4, inf, 2]
  assert fr["beyond_fraction"] == pytest.approx(1 / 3) and fr["within_steps"] == 6
  lo, hi = fr["t_train_multiple_ci"]
  assert lo == 1.0 and hi is None  # some resamples hold teacher 1 twice: beyond
  assert metrics.free_running_horizon(err[1:2], np.ones((1, 8)), 2, 2, 2)["steps"] is None
