"""Stream files: round trips, the accepted layouts, and every malformed case."""

import jax
import numpy as np
import pytest

from learners import npz, streams


def _spec(path, horizon=6, batch=3):
  return streams.StreamSpec(kind="npz", npz_path=str(path), horizon=horizon, batch=batch)


def _stream_of(path, **kw):
  spec = _spec(path, **kw)
  data = streams.load_data(spec)
  s = jax.jit(npz.npz_stream, static_argnums=0)(spec, jax.random.key(0), data)
  return jax.tree.map(np.asarray, s), data


@pytest.mark.parametrize("kind", ["mlp_classification", "linear_regression"])
def test_save_load_round_trip_gives_back_the_stream(tmp_path, kind):
  spec = streams.StreamSpec(kind=kind, horizon=6, batch=3, dim=5, out_dim=2,
                            task_switch_every=2)
  original = jax.tree.map(np.asarray, streams.make_stream(spec, jax.random.key(3)))
  path = tmp_path / "stream.data"  # any name: nothing is appended
  npz.save_stream(str(path), original, n_classes=spec.n_classes)
  back, data = _stream_of(path)
  for a, b in zip(original, back):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  out = spec.n_classes if spec.task == "classification" else 2
  assert streams.signature(_spec(path), data) == (spec.task, (5,), out)


def test_flat_file_is_consumed_in_order(tmp_path):
  path = tmp_path / "s.npz"
  x = np.arange(40, dtype=np.float64).reshape(20, 2)
  y = np.arange(20) % 3
  task_id = np.repeat([0, 1, 2, 3], 5)
  np.savez(path, x=x, y=y, task_id=task_id)
  s, data = _stream_of(path, horizon=4, batch=4)  # uses the first 16 of 20 examples
  np.testing.assert_array_equal(s.x, x[:16].reshape(4, 4, 2))
  np.testing.assert_array_equal(s.y, y[:16].reshape(4, 4))
  np.testing.assert_array_equal(s.task_id, task_id[[0, 4, 8, 12]])  # first example's
  assert s.x.dtype == np.float32 and s.y.dtype == np.int32 and s.task_id.dtype == np.int32
  assert (data.task, data.n_classes) == ("classification", 3)


def test_regression_targets_and_defaults(tmp_path):
  x = np.random.default_rng(0).normal(size=(12, 3))
  np.savez(tmp_path / "scalar.npz", x=x, y=np.linspace(0, 1, 12))
  s, data = _stream_of(tmp_path / "scalar.npz", horizon=4, batch=3)
  assert data.task == "regression" and s.y.shape == (4, 3, 1)
  np.testing.assert_allclose(s.y[..., 0], np.linspace(0, 1, 12).reshape(4, 3), rtol=1e-6)
  np.testing.assert_array_equal(s.task_id, np.zeros(4))
  assert npz.signature(_spec(tmp_path / "scalar.npz"), data) == ("regression", (3,), 1)
  np.savez(tmp_path / "wide.npz", x=x, y=np.ones((12, 4), np.float32))
  s, data = _stream_of(tmp_path / "wide.npz", horizon=2, batch=6)
  assert s.y.shape == (2, 6, 4) and npz.signature(None, data)[2] == 4


def test_explicit_n_classes(tmp_path):
  np.savez(tmp_path / "c.npz", x=np.ones((6, 2)), y=np.array([0, 1, 1, 0, 1, 0]),
           n_classes=7)
  _, data = _stream_of(tmp_path / "c.npz", horizon=2, batch=3)
  assert data.n_classes == 7


def test_teacher_dump_is_read_as_its_stream(tmp_path):
  rng = np.random.default_rng(0)
  T, B = 5, 2
  x = rng.normal(size=(T, B, 3)).astype(np.float32)
  y = rng.integers(0, 4, (T, B)).astype(np.int32)
  task_id = np.array([0, 0, 1, 1, 2], np.int32)
  np.savez(tmp_path / "teacher.npz", x=x, y=y, task_id=task_id,
           behaviour=rng.random((T, B, 4)), loss=rng.random(T))
  s, data = _stream_of(tmp_path / "teacher.npz", horizon=T, batch=B)
  np.testing.assert_array_equal(s.x, x)
  np.testing.assert_array_equal(s.y, y)
  np.testing.assert_array_equal(s.task_id, task_id)
  # Replayed with a smaller batch, the same examples come in the same order.
  s, _ = _stream_of(tmp_path / "teacher.npz", horizon=10, batch=1)
  np.testing.assert_array_equal(s.x[:, 0], x.reshape(10, 3))
  np.testing.assert_array_equal(s.task_id, np.repeat(task_id, B))


def test_too_short_file_names_n_horizon_and_batch(tmp_path):
  np.savez(tmp_path / "short.npz", x=np.ones((10, 2)), y=np.ones(10))
  data = npz.load(str(tmp_path / "short.npz"))
  with pytest.raises(ValueError, match=r"N=10.*4 \* 3 = 12") as err:
    npz.npz_stream(_spec(tmp_path / "short.npz", horizon=4, batch=3), None, data)
  assert "short.npz" in str(err.value)


X, Y = np.ones((8, 2)), np.arange(8) % 2
MALFORMED = {
    "missing_x": ({"y": Y}, "x"),
    "missing_y": ({"x": X}, "y"),
    "short_y": ({"x": X, "y": Y[:7]}, "y"),
    "short_task_id": ({"x": X, "y": Y, "task_id": np.zeros(5, int)}, "task_id"),
    "string_y": ({"x": X, "y": np.array(["a"] * 8)}, "y"),
    "complex_x": ({"x": X + 1j, "y": Y}, "x"),
    "bool_y": ({"x": X, "y": Y.astype(bool)}, "y"),
    "object_x": ({"x": np.array([None] * 8, object), "y": Y}, "x"),
    "nan_x": ({"x": np.where(np.eye(8, 2), np.nan, 1.0), "y": Y}, "x"),
    "inf_y": ({"x": X, "y": np.array([0.0] * 7 + [np.inf])}, "y"),
    "negative_label": ({"x": X, "y": Y - 1}, "y"),
    "negative_task": ({"x": X, "y": Y, "task_id": -np.ones(8, int)}, "task_id"),
    "float_task": ({"x": X, "y": Y, "task_id": np.zeros(8)}, "task_id"),
    "rank1_x": ({"x": np.ones(8), "y": Y}, "x"),
    "rank2_int_y": ({"x": X, "y": np.ones((8, 2), int)}, "y"),
    "rank3_y": ({"x": X, "y": np.ones((8, 2, 2))}, "y"),
    "rank2_task": ({"x": X, "y": Y, "task_id": np.zeros((8, 1), int)}, "task_id"),
    "empty": ({"x": np.ones((0, 2)), "y": np.ones(0, int)}, "x"),
    "one_class": ({"x": X, "y": np.zeros(8, int)}, "y"),
    "small_n_classes": ({"x": X, "y": Y, "n_classes": 1}, "n_classes"),
    "dump_x_rank": ({"x": X, "y": Y, "behaviour": X}, "x"),
    "dump_y_shape": ({"x": np.ones((4, 2, 3)), "y": np.ones((4, 3), int),
                      "behaviour": X}, "y"),
    "dump_task_id": ({"x": np.ones((4, 2, 3)), "y": np.ones((4, 2), int),
                      "task_id": np.zeros(8, int), "behaviour": X}, "task_id"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_files_name_the_file_and_the_key(tmp_path, case):
  arrays, key = MALFORMED[case]
  path = str(tmp_path / f"{case}.npz")
  np.savez(path, **arrays)
  with pytest.raises(ValueError) as err:
    npz.load(path)
  assert path in str(err.value) and f"key '{key}'" in str(err.value), str(err.value)


def test_unreadable_files_name_the_file(tmp_path):
  missing = str(tmp_path / "nope.npz")
  with pytest.raises(ValueError, match="does not exist") as err:
    npz.load(missing)
  assert missing in str(err.value)
  text = tmp_path / "text.npz"
  text.write_text("x,y\n1,2\n")
  npy = tmp_path / "array.npz"
  with open(npy, "wb") as f:
    np.save(f, X)
  for path in (str(text), str(npy)):
    with pytest.raises(ValueError, match="not an .npz archive") as err:
      npz.load(path)
    assert path in str(err.value)
