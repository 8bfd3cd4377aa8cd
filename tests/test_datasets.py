"""Labelled datasets: the offline builders, standard TFDS names, and their errors."""

import os
import socket

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from learners import datasets, streams


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """Both built-in datasets built once, with the network switched off."""
  path = str(tmp_path_factory.mktemp("tfds"))

  def no_network(*args, **kwargs):
    raise AssertionError("a built-in dataset tried to use the network")

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, "connect", no_network)
    mp.setattr(socket, "getaddrinfo", no_network)
    np.random.seed(123)
    for name in datasets.BUILTIN:
      datasets.load_labelled(name, path, "train")
    # mnist1d reseeds numpy's global generator while it builds; it must come back.
    assert np.random.randint(1 << 30) == np.random.RandomState(123).randint(1 << 30)
  return path


def test_digits_builds_offline_into_data_dir_and_loads_both_splits(data_dir):
  from sklearn.datasets import load_digits
  folder = os.path.join(data_dir, "imitation_digits", "1.0.0")
  assert any(f.endswith("array_record-00000-of-00001") for f in os.listdir(folder))
  train = datasets.load_labelled("digits", data_dir, "train")
  test = datasets.load_labelled("digits", data_dir, "test")
  assert train.x.shape == (1437, 8, 8, 1) and test.x.shape == (360, 8, 8, 1)
  assert train.x.dtype == np.float32 and train.y.dtype == np.int32
  assert train.n_classes == test.n_classes == 10
  x_train, x_test = np.asarray(train.x), np.asarray(test.x)
  assert abs(x_train.mean()) < 1e-5 and abs(x_train.std() - 1) < 1e-5
  # Both splits share train's affine standardization, so one map recovers raw pixels
  # on the 1/16 grid; together they are exactly scikit-learn's digits, each once.
  lo, hi = x_train.min(), x_train.max()
  raw = [(x - lo) / (hi - lo) for x in (x_train, x_test)]
  for r in raw:
    np.testing.assert_allclose(r * 16, np.round(r * 16), atol=1e-4)
  digits = load_digits()
  expect = np.concatenate([digits.images.reshape(-1, 64) / 16, digits.target[:, None]], 1)
  got = np.concatenate([
      np.concatenate([np.round(r.reshape(-1, 64) * 16) / 16, np.asarray(d.y)[:, None]], 1)
      for r, d in ((raw[0], train), (raw[1], test))])
  rows = lambda a: a[np.lexsort(a.T)]
  np.testing.assert_array_equal(rows(got), rows(expect))


def test_mnist1d_builds_offline_with_its_own_split(data_dir):
  from mnist1d import data as mnist1d_data
  ref = mnist1d_data.make_dataset(mnist1d_data.get_dataset_args())
  for split, xk, yk in (("train", "x", "y"), ("test", "x_test", "y_test")):
    d = datasets.load_labelled("mnist1d", data_dir, split)
    assert d.x.shape == ref[xk].shape and d.x.dtype == np.float32
    assert d.y.dtype == np.int32 and d.n_classes == 10
    expected = (ref[xk].astype(np.float32) - ref["x"].astype(np.float32).mean()
                ) / ref["x"].astype(np.float32).std()
    order = lambda x, y: np.lexsort(np.concatenate([x, y[:, None]], 1).T)
    got_x, got_y = np.asarray(d.x), np.asarray(d.y)
    i, j = order(got_x, got_y), order(expected, ref[yk])
    np.testing.assert_allclose(got_x[i], expected[j], atol=1e-4)
    np.testing.assert_array_equal(got_y[i], ref[yk][j])
  train = datasets.load_labelled("mnist1d", data_dir, "train")
  assert abs(float(train.x.mean())) < 1e-5 and abs(float(train.x.std()) - 1) < 1e-5


def test_standard_dataset_name_reads_through_tfds_data_source(tmp_path):
  with tfds.testing.mock_data(num_examples=24):
    d = datasets.load_labelled("mnist", str(tmp_path), "train")
    source = tfds.data_source("mnist", split="train", data_dir=str(tmp_path),
                              download=False)
    raw = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float64)
    labels = np.array([source[i]["label"] for i in range(len(source))])
  assert d.x.shape == (24, 28, 28, 1) and d.x.dtype == np.float32
  assert d.n_classes == 10 and d.y.dtype == np.int32
  np.testing.assert_allclose(d.x, (raw - raw.mean()) / raw.std(), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(d.y, labels)


def test_missing_standard_dataset_names_the_folder_and_the_flag(tmp_path):
  folder = str(tmp_path / "empty")
  with pytest.raises(ValueError, match="--data_dir") as err:
    datasets.load_labelled("mnist", folder, "train")
  assert "'mnist'" in str(err.value) and folder in str(err.value)
  assert "digits, mnist1d" in str(err.value)


def test_unknown_and_unsupported_datasets_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset'"):
    datasets.load_labelled("no_such_dataset", str(tmp_path), "train")
  with pytest.raises(ValueError, match="'imdb_reviews' is not supported.*'text'"):
    datasets.load_labelled("imdb_reviews", str(tmp_path), "train")


def test_dataset_stream_spec_loads_and_streams_end_to_end(data_dir):
  spec = streams.StreamSpec(kind="dataset", dataset="digits", data_dir=data_dir,
                            split="test", protocol="rotated", horizon=4, batch=2,
                            task_switch_every=2)
  data = streams.load_data(spec)
  assert data.x.shape == (360, 8, 8, 1)
  assert streams.signature(spec, data) == ("classification", (8, 8, 1), 10)
  s = jax.jit(streams.make_stream, static_argnums=0)(spec, jax.random.key(0), data)
  assert s.x.shape == (4, 2, 8, 8, 1) and s.y.shape == (4, 2)
  assert streams.load_data(streams.StreamSpec()) is None
  assert streams.signature(streams.StreamSpec(kind="mlp_classification", dim=3,
                                              n_classes=5)) == ("classification", (3,), 5)
