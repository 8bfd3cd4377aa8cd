"""Continual-learning protocols, checked against numpy on tiny hand-made datasets."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from learners import protocols, streams
from learners.datasets import LabelledData

C = 5


def _data(n=40, shape=(4, 4, 1), seed=0):
  """Distinct random feature values, so a permuted input identifies its example."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n,) + shape).astype(np.float32)
  y = (np.arange(n) % C).astype(np.int32)
  return LabelledData(x=jnp.asarray(x), y=jnp.asarray(y), n_classes=C)


def _spec(protocol, **kw):
  kw = {"horizon": 12, "batch": 4, "task_switch_every": 3, **kw}
  return streams.StreamSpec(kind="dataset", protocol=protocol, **kw)


_protocol_stream = jax.jit(protocols.protocol_stream, static_argnums=0)


def _stream(spec, data, seed=0):
  s = _protocol_stream(spec, jax.random.key(seed), data)
  return jax.tree.map(np.asarray, s)


def _source(data, row):
  """Index of the dataset example whose feature values `row` holds (in any order)."""
  flat = np.sort(np.asarray(data.x).reshape(len(data.y), -1), axis=1)
  match = np.flatnonzero((flat == np.sort(row.ravel())).all(axis=1))
  assert len(match) == 1
  return match[0]


def test_task_ids_switch_every_k_steps():
  s = _stream(_spec("permuted", horizon=10, task_switch_every=3), _data())
  np.testing.assert_array_equal(s.task_id, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
  assert s.task_id.dtype == np.int32
  s = _stream(_spec("permuted", horizon=10, task_switch_every=0), _data())
  np.testing.assert_array_equal(s.task_id, np.zeros(10))


def test_permuted_applies_one_permutation_per_task_and_task0_is_identity():
  data = _data()
  s = _stream(_spec("permuted"), data)
  X = np.asarray(data.x).reshape(len(data.y), -1)
  perms = {}
  for t in range(s.horizon):
    for b in range(s.batch):
      row = s.x[t, b].ravel()
      j = _source(data, row)
      assert s.y[t, b] == data.y[j]
      perm = np.array([np.flatnonzero(X[j] == v)[0] for v in row])  # row = X[j][perm]
      perms.setdefault(int(s.task_id[t]), perm)
      np.testing.assert_array_equal(perm, perms[int(s.task_id[t])])
  assert sorted(perms) == [0, 1, 2, 3]
  np.testing.assert_array_equal(perms[0], np.arange(X.shape[1]))
  for k in (1, 2, 3):
    assert not np.array_equal(perms[k], perms[0])
  assert not np.array_equal(perms[1], perms[2])
  assert s.x.shape == (12, 4, 4, 4, 1) and s.x.dtype == np.float32


def test_split_draws_only_the_tasks_classes_with_wraparound():
  data = _data()
  spec = _spec("split", horizon=40, batch=8, task_switch_every=8, classes_per_task=2)
  s = _stream(spec, data)
  X = np.asarray(data.x)
  for t in range(s.horizon):
    k = s.task_id[t]
    allowed = {(2 * k) % C, (2 * k + 1) % C}  # task 2 is {4, 0}
    for b in range(s.batch):
      assert s.y[t, b] in allowed
      j = np.flatnonzero((X == s.x[t, b]).all(axis=(1, 2, 3)))
      assert len(j) == 1 and data.y[j[0]] == s.y[t, b]  # labels keep their identity
  for k in range(5):
    assert set(s.y[s.task_id == k].ravel()) == {(2 * k) % C, (2 * k + 1) % C}


def test_split_is_uniform_over_the_allowed_examples():
  # Class 0 has three times as many examples as class 1: draws follow the examples.
  y = np.array([0] * 30 + [1] * 10 + [2] * 10, np.int32)
  x = np.arange(50, dtype=np.float32)[:, None]
  data = LabelledData(x=jnp.asarray(x), y=jnp.asarray(y), n_classes=3)
  s = _stream(_spec("split", horizon=100, batch=40, task_switch_every=0,
                    classes_per_task=2), data)
  drawn = s.x.ravel().astype(int)
  counts = np.bincount(drawn, minlength=50)
  assert (counts[:40] > 0).all() and (counts[40:] == 0).all()  # every allowed example
  np.testing.assert_array_equal(y[drawn], s.y.ravel())
  assert abs(np.mean(s.y == 0) - 0.75) < 0.03


def test_label_permuted_maps_true_labels_through_one_permutation_per_task():
  data = _data()
  s = _stream(_spec("label_permuted", horizon=60, batch=8, task_switch_every=20), data)
  X = np.asarray(data.x)
  maps = {0: {}, 1: {}, 2: {}}
  for t in range(s.horizon):
    for b in range(s.batch):
      j = np.flatnonzero((X == s.x[t, b]).all(axis=(1, 2, 3)))  # inputs untouched
      assert len(j) == 1
      true = int(data.y[j[0]])
      maps[int(s.task_id[t])].setdefault(true, int(s.y[t, b]))
      assert maps[int(s.task_id[t])][true] == s.y[t, b]
  for k, m in maps.items():
    assert sorted(m) == list(range(C)) and sorted(m.values()) == list(range(C))
  assert maps[0] == {c: c for c in range(C)}
  assert maps[1] != maps[0] and maps[2] != maps[0]


@pytest.mark.parametrize("size", [5, 6])
def test_rotated_turns_images_counter_clockwise_like_rot90(size):
  data = _data(shape=(size, size, 2))
  X = np.asarray(data.x)
  s0 = _stream(_spec("rotated", rotation_degrees=0.0), data)
  s = _stream(_spec("rotated", rotation_degrees=90.0), data)
  np.testing.assert_array_equal(s0.x[:3], s.x[:3])  # task 0 is unrotated, same draws
  for t in range(s.horizon):
    for b in range(s.batch):
      j = np.flatnonzero((X == s0.x[t, b]).all(axis=(1, 2, 3)))  # 0 degrees: exact
      assert len(j) == 1
      expected = np.rot90(X[j[0]], k=int(s.task_id[t]), axes=(0, 1))
      np.testing.assert_allclose(s.x[t, b], expected, atol=1e-5)


def test_rotated_by_45_keeps_the_centre_pixel_and_needs_images():
  data = _data(shape=(5, 5, 1))
  s = _stream(_spec("rotated", rotation_degrees=45.0), data)
  s0 = _stream(_spec("rotated", rotation_degrees=0.0), data)
  np.testing.assert_allclose(s.x[:, :, 2, 2], s0.x[:, :, 2, 2], atol=1e-5)
  assert not np.allclose(s.x[3:], s0.x[3:])
  with pytest.raises(ValueError, match="rotated.*images"):
    protocols.protocol_stream(_spec("rotated"), jax.random.key(0), _data(shape=(7,)))


@pytest.mark.parametrize("protocol", protocols.PROTOCOLS)
def test_deterministic_per_key_and_jit_matches_eager(protocol):
  data = _data()
  spec = _spec(protocol, rotation_degrees=30.0)
  a, b, c = _stream(spec, data, 0), _stream(spec, data, 0), _stream(spec, data, 1)
  chex.assert_trees_all_equal(a, b)
  assert not np.array_equal(a.x, c.x)
  eager = protocols.protocol_stream(spec, jax.random.key(0), data)
  chex.assert_trees_all_close(a, eager, rtol=1e-7, atol=1e-6)


def test_input_scale_and_skew_scale_flattened_features_like_synthetic_streams():
  data = _data(shape=(3, 2))
  base = _stream(_spec("permuted"), data)
  s = _stream(_spec("permuted", input_scale=2.0, skew=1.5), data)
  var = np.arange(1, 7, dtype=np.float64) ** -1.5
  std = 2.0 * np.sqrt(var / var.mean())
  expected = base.x.reshape(12, 4, 6) * std
  np.testing.assert_allclose(s.x.reshape(12, 4, 6), expected, rtol=1e-5)
  np.testing.assert_array_equal(s.y, base.y)


def test_label_noise_replaces_a_fraction_of_labels_by_uniform_classes():
  data = _data()
  spec = _spec("split", horizon=200, batch=20, classes_per_task=1)
  clean = _stream(spec, data)
  noisy = _stream(spec.replace(label_noise=0.5), data)
  np.testing.assert_array_equal(clean.x, noisy.x)
  changed = np.mean(clean.y != noisy.y)
  assert abs(changed - 0.5 * (C - 1) / C) < 0.03
  assert set(np.unique(noisy.y)) == set(range(C))


def test_bad_specs_raise_clear_errors():
  data = _data()
  with pytest.raises(ValueError, match="drift"):
    protocols.protocol_stream(_spec("permuted", drift=0.1), jax.random.key(0), data)
  with pytest.raises(ValueError, match="label_permuted"):
    protocols.protocol_stream(_spec("shuffled"), jax.random.key(0), data)
  with pytest.raises(ValueError, match="classes_per_task"):
    protocols.protocol_stream(_spec("split", classes_per_task=6), jax.random.key(0), data)


def test_signature_and_make_stream_dispatch():
  data = _data()
  spec = _spec("permuted")
  assert protocols.signature(spec, data) == ("classification", (4, 4, 1), C)
  assert streams.signature(spec, data) == ("classification", (4, 4, 1), C)
  s = jax.tree.map(np.asarray, streams.make_stream(spec, jax.random.key(0), data))
  chex.assert_trees_all_equal(s, _stream(spec, data))
