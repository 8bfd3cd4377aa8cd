"""Recorded choices (learners.recorded_choices): tab- and comma-separated trial tables of
real agents read into padded arrays, written back exactly, and bad files refused naming
the line, the value and what is allowed."""

from __future__ import annotations

import csv
import random

import jax
import numpy as np
import pytest

from learners import acting, environments
from learners import recorded_choices as rc

HEADER = "subject,trial,choice,outcome\n"


def _file(tmp_path, text, name="c.csv"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def _ragged(seed=0, arms=3):
  """Choices of 3 subjects of 5, 2 and 4 trials, rewards not all 0/1."""
  rng = np.random.default_rng(seed)
  lengths = [5, 2, 4]
  mask = np.arange(5)[None] < np.asarray(lengths)[:, None]
  choice = np.where(mask, rng.integers(0, arms, mask.shape), -1).astype(np.int32)
  reward = np.where(mask, rng.normal(size=mask.shape), 0).astype(np.float32)
  reward[0, :2] = [0.0, 1.0]
  return rc.Choices(np.asarray(["s-7", "p 2", "a,b"]), choice, reward, mask)


def _assert_equal(got: rc.Choices, want: rc.Choices):
  assert list(got.subject) == list(want.subject)
  for field in ("choice", "reward", "mask"):
    g, w = getattr(got, field), getattr(want, field)
    assert g.dtype == w.dtype and np.array_equal(g, w), field


@pytest.mark.parametrize("suffix, delimiter", [(".tsv", "\t"), (".txt", "\t"),
                                               (".csv", ",")])
@pytest.mark.parametrize("one_based", [True, False])
def test_round_trip_ragged_and_shuffled(tmp_path, suffix, delimiter, one_based):
  want = _ragged()
  path = str(tmp_path / f"c{suffix}")
  rc.write(path, want, one_based=one_based)
  lines = open(path).read().splitlines()
  assert lines[0] == delimiter.join(rc.FIELDS) and len(lines) == 1 + want.mask.sum()
  _assert_equal(rc.read(path, one_based=one_based, arms=3), want)
  # Rows in any order: each subject's are sorted by trial, subjects kept in the order
  # of their first row.
  body = lines[1:]
  random.Random(0).shuffle(body)
  with open(path, "w") as f:
    f.write("\n".join(lines[:1] + body) + "\n")
  got = rc.read(path, one_based=one_based)
  order = list(dict.fromkeys(row[0] for row in csv.reader(body, delimiter=delimiter)))
  perm = [list(want.subject).index(s) for s in order]
  _assert_equal(got, rc.Choices(*(np.asarray(a)[perm] for a in want)))


def test_acting_teachers_written_by_hand_read_back(tmp_path):
  family = acting.ActingFamily(arms=2, rules=("q_learning",))
  bandit = environments.Bandit(horizon=40)
  # Set by hand: compiling family.sample too would about double the test's time.
  hp = {f: np.full(3, 0.1, np.float32) for f in acting.FIELDS}
  hp.update(rule=np.zeros(3, np.int32), beta=np.asarray([2.0, 5.0, 10.0], np.float32),
            alpha_pos=np.asarray([0.1, 0.3, 0.6], np.float32))
  simulate = jax.jit(jax.vmap(lambda h, k: acting.rollout(family, h, bandit.tables(k))))
  traj = jax.device_get(simulate(hp, jax.random.split(jax.random.PRNGKey(3), 3)))
  # A lab's export: 1-based choices, trials from 1, rows interleaved across subjects.
  rows = [f"sub{s + 1},{t + 1},{traj.choice[s, t] + 1},{traj.reward[s, t]:g}"
          for t in range(40) for s in range(3)]
  path = _file(tmp_path, HEADER + "\n".join(rows) + "\n")
  got = rc.read(path, one_based=True, arms=2)
  assert list(got.subject) == ["sub1", "sub2", "sub3"] and got.mask.all()
  np.testing.assert_array_equal(got.choice, traj.choice)
  np.testing.assert_array_equal(got.reward, traj.reward)
  assert set(np.unique(got.choice)) == {0, 1}  # both arms chosen: the check has teeth


def test_custom_columns_case_and_spaces_and_extra_columns(tmp_path):
  text = (" RT\tRew \tParticipant\tResponse\tTrial_No\n"
          "0.5\t1\tA\t2.0\t2\n"  # 2.0: as float-typed exports write 2
          "0.4\t0\tA\t1\t1\n"
          "0.7\t0.5\tB\t3\t10\n")
  path = _file(tmp_path, text, "c.tsv")
  got = rc.read(path, one_based=True, columns={"subject": "participant",
                                               "choice": "response", "trial": "trial_no",
                                               "outcome": "rew"})
  assert list(got.subject) == ["A", "B"]
  np.testing.assert_array_equal(got.choice, [[0, 1], [2, -1]])
  np.testing.assert_array_equal(got.reward, np.asarray([[0, 1], [0.5, 0]], np.float32))
  np.testing.assert_array_equal(got.mask, [[True, True], [True, False]])


def _rows(*rows):
  return HEADER + "".join(r + "\n" for r in rows)


@pytest.mark.parametrize("text, kwargs, match", [
    ("subject;trial;choice;outcome\ns;1;1;0\n", {},
     r"c\.csv.*neither a tab nor a comma; allowed: tab- or comma-separated"),
    ("subject,trial,response,outcome\ns,1,1,0\n", {},
     r"no column 'choice'; the header is \['subject', 'trial', 'response', 'outcome'\]"
     r".*columns=\{'choice': NAME\}"),
    ("subject,trial,choice,outcome\n", {}, r"no data rows"),
    ("", {}, r"is empty"),
    (_rows("s1,1,1,0", "s1,2,2,1", "s1,1,2,0"), {},
     r"subject 's1' has trial 1 twice \(lines 2 and 4\)"),
    (_rows("s1,1,1,0", "s1,x2,1,0"), {}, r"line 3: trial 'x2' is not an integer"),
    (_rows("s1,1,1,0", "s1,2,left,0"), {},
     r"line 3: choice 'left' is not an integer; allowed: integers >= 1 "
     r"\(one_based=True\)"),
    (_rows("s1,1,1.5,0"), {}, r"line 2: choice '1.5' is not an integer"),
    (_rows("s1,1,1,0", "s1,2,0,1"), {},
     r"line 3: choice '0' is below 1.*pass one_based=False"),
    (_rows("s1,1,0,0", "s1,2,2,1"), {"one_based": False, "arms": 2},
     r"line 3: choice '2' is out of range; allowed: integers 0 \.\. 1 \(one_based=False, "
     r"arms=2\)\. A choice equal to arms looks 1-based: pass one_based=True"),
    (_rows("s1,1,1,0", "s1,2,5,1"), {"arms": 3},
     r"line 3: choice '5' is out of range; allowed: integers 1 \.\. 3 \(one_based=True, "
     r"arms=3\)\.$"),
    (_rows("s1,1,-1,0"), {"one_based": False},
     r"line 2: choice '-1' is negative; allowed: integers >= 0"),
    (_rows("s1,1,1,0", "s1,2,1,nan"), {},
     r"line 3: outcome 'nan' is not a finite number"),
    (_rows("s1,1,1,0", "s1,2,1,"), {}, r"line 3: outcome '' is not a finite number"),
    (_rows("s1,1,1,0", "s1,2,1"), {},
     r"line 3 has 3 fields; the header \(line 1\) has 4"),
    (_rows("s1,1,1,0", ",2,1,0"), {}, r"line 3: the subject id is empty"),
])
def test_bad_files_name_the_line_value_and_what_is_allowed(tmp_path, text, kwargs, match):
  path = _file(tmp_path, text)
  kwargs = {"one_based": True, **kwargs}
  with pytest.raises(ValueError, match=match):
    rc.read(path, **kwargs)


def test_missing_renamed_column_names_our_field(tmp_path):
  path = _file(tmp_path, _rows("s1,1,1,0"))
  with pytest.raises(ValueError, match=r"no column 'resp' \(for 'choice'\)"):
    rc.read(path, one_based=True, columns={"choice": "resp"})
  with pytest.raises(ValueError, match=r"columns keys \['reward'\]; allowed"):
    rc.read(path, one_based=True, columns={"reward": "outcome"})
  with pytest.raises(ValueError, match=r"arms=1 must be an integer >= 2"):
    rc.read(path, one_based=True, arms=1)


def test_write_refuses_ids_read_would_change(tmp_path):
  want = _ragged()
  for ids in (["a", "b", "a"], ["a", " b", "c"], ["a", "", "c"]):
    with pytest.raises(ValueError, match=r"distinct non-empty ids"):
      rc.write(str(tmp_path / "c.csv"), want._replace(subject=np.asarray(ids)),
               one_based=True)
