"""The PyTorch peers of the benchmark run the same teachers as our JAX rollout.

Each peer's behaviour is compared with `rollout.population_rollout` on a problem built
by `learners.torch_peers.jax_problem` (same hyperparams, initial weights and streams).
Skipped when torch (the `bench` extra) is not installed.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from learners import torch_peers  # pylint: disable=wrong-import-position

P, WIDTH, HORIZON = 3, 8, 50
TOL = 1e-4


@pytest.fixture(scope="module")
def problem_b4():
  return torch_peers.jax_problem(P, WIDTH, 4, HORIZON, seed=1)


def first_example(problem):
  """The same teachers on the first example of each step: a B=1 problem without
  compiling a second problem builder (JAX compiles dominate this file's time)."""
  stream = problem.stream._replace(x=problem.stream.x[:, :, :1],
                                   y=problem.stream.y[:, :, :1])
  inputs = dict(problem.torch_inputs, x=problem.torch_inputs["x"][:, :, :1].copy(),
                y=problem.torch_inputs["y"][:, :, :1].copy())
  return problem._replace(stream=stream, torch_inputs=inputs)


@pytest.fixture(scope="module", params=[1, 4], ids=["B1", "B4"])
def problem_and_reference(request, problem_b4):
  problem = first_example(problem_b4) if request.param == 1 else problem_b4
  reference = torch_peers.jax_rollout(problem, repeats=1)["behaviour"]
  return problem, reference


def test_problem_inputs_match_the_jax_problem(problem_and_reference):
  problem, _ = problem_and_reference
  family, hparams, init_keys, stream, inputs = problem
  B = stream.x.shape[2]
  assert family.name == "sgd_mlp" and family.width == WIDTH
  assert inputs["x"].shape == (P, HORIZON, B, 8) and inputs["x"].dtype == np.float32
  assert inputs["y"].shape == (P, HORIZON, B, 1)
  np.testing.assert_array_equal(inputs["lrs"], np.asarray(hparams["learning_rate"]))
  np.testing.assert_array_equal(np.asarray(hparams["weight_decay"]), 0.0)
  assert len(np.unique(inputs["lrs"])) == P  # every teacher its own learning rate
  assert inputs["init_params"]["dense_0"]["w"].shape == (P, 8, WIDTH)
  assert inputs["init_params"]["dense_1"]["b"].shape == (P, 1)
  assert init_keys.shape[0] == P


@pytest.mark.parametrize("backward", ["manual", "autograd"])
def test_batched_matches_jax(problem_and_reference, backward):
  problem, reference = problem_and_reference
  before = {k: v["w"].copy() for k, v in problem.torch_inputs["init_params"].items()}
  out = torch_peers.torch_batched(**problem.torch_inputs, backward=backward)
  assert out["behaviour"].shape == reference.shape
  np.testing.assert_allclose(out["behaviour"], reference, atol=TOL, rtol=0)
  assert out["steps_per_s"] > 0
  for k, w in before.items():  # in-place updates stay on torch's own copies
    np.testing.assert_array_equal(problem.torch_inputs["init_params"][k]["w"], w)


def test_loop_matches_jax(problem_and_reference):
  problem, reference = problem_and_reference
  out = torch_peers.torch_loop(**problem.torch_inputs)
  assert not out["extrapolated"]
  assert out["measured_steps"] == P * HORIZON and out["teachers_completed"] == P
  np.testing.assert_allclose(out["behaviour"], reference, atol=TOL, rtol=0)


def test_loop_with_a_tiny_budget_extrapolates(problem_and_reference):
  problem, reference = problem_and_reference
  out = torch_peers.torch_loop(**problem.torch_inputs, time_budget_s=1e-4)
  assert out["extrapolated"]
  assert 1 <= out["measured_steps"] < P * HORIZON
  assert out["steps_per_s"] > 0
  assert out["estimated_total_s"] == pytest.approx(P * HORIZON / out["steps_per_s"])
  beh = out["behaviour"]
  done = np.isfinite(beh).all(axis=(2, 3))
  assert done.sum() == out["measured_steps"]
  np.testing.assert_allclose(beh[done], reference[:beh.shape[0]][done], atol=TOL, rtol=0)


def test_bad_inputs_are_named(problem_and_reference):
  problem, _ = problem_and_reference
  inputs = dict(problem.torch_inputs, lrs=np.ones(P + 1, np.float32))
  with pytest.raises(ValueError, match="lrs"):
    torch_peers.torch_batched(**inputs)
  with pytest.raises(ValueError, match="backward"):
    torch_peers.torch_batched(**problem.torch_inputs, backward="jit")


def test_missing_torch_names_the_bench_extra(monkeypatch, problem_and_reference):
  problem, _ = problem_and_reference
  import builtins  # pylint: disable=import-outside-toplevel
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  for peer in (torch_peers.torch_loop, torch_peers.torch_batched):
    with pytest.raises(ImportError, match=r"pip install -e '\.\[bench\]'"):
      peer(**problem.torch_inputs)
