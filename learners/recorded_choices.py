"""Recorded choices: trial-by-trial bandit choices of real agents (people, animals), read
from the tabular layout common in cognitive science.

The file is text with a header row, tab-separated if the header line holds a tab, else
comma-separated, and one row per trial with (at least) four columns:

- `subject`: the agent's id (any non-empty text);
- `trial`: an integer that orders the subject's trials (rows may come in any order;
  gaps are allowed and dropped: only the order is kept);
- `choice`: the chosen arm, an integer, 1-based or 0-based as the caller states
  (`one_based`); a value such as "2.0" counts as the integer 2;
- `outcome`: the reward, any finite float (0/1 in most bandit tasks).

Header names are matched case-insensitively, after stripping spaces; `columns` maps our
names to the file's (`columns={"choice": "response"}`), and other columns are ignored.
`read` returns a `Choices` of S subjects padded at the end to the longest, T trials;
`write` is its inverse.
"""

from __future__ import annotations

import csv
import math
import os
from typing import NamedTuple

import numpy as np

FIELDS = ("subject", "trial", "choice", "outcome")


class Choices(NamedTuple):
  """subject [S] (str ids, in order of first appearance), choice [S, T] int32 (0-based;
  -1 where padded), reward [S, T] float32 (0 where padded), mask [S, T] bool (True on
  recorded trials)."""

  subject: np.ndarray
  choice: np.ndarray
  reward: np.ndarray
  mask: np.ndarray


def _fail(path, msg):
  return ValueError(f"recorded choices file {path!r}: {msg}")


def _integer(text: str) -> int | None:
  """The integer `text` spells ("3", or "3.0" as written by tools that store floats), else
  None."""
  try:
    return int(text)
  except ValueError:
    pass
  try:
    value = float(text)
  except ValueError:
    return None
  return int(value) if math.isfinite(value) and value.is_integer() else None


def _header(path, f):
  """(line number, delimiter, names stripped and lower-cased) of the first non-blank line
  of the open file f; ValueError naming what is allowed."""
  number = 0
  for line in f:
    number += 1
    if line.strip():
      break
  else:
    raise _fail(path, "is empty; a header row (subject, trial, choice, outcome) and one "
                      "row per trial are expected.")
  line = line.rstrip("\r\n")
  if "\t" in line:
    delimiter = "\t"
  elif "," in line:
    delimiter = ","
  else:
    raise _fail(path, f"header line {number} {line!r} holds neither a tab nor a comma; "
                      f"allowed: tab- or comma-separated columns with a header row "
                      f"(subject, trial, choice, outcome).")
  names = next(csv.reader([line], delimiter=delimiter))
  return number, delimiter, [n.strip().lower() for n in names]


def _column_indices(path, names, columns) -> dict:
  """{our field: its index in the header names}; ValueError naming the missing ones."""
  columns = dict(columns or {})
  unknown = sorted(set(columns) - set(FIELDS))
  if unknown:
    raise ValueError(f"columns keys {unknown}; allowed: {list(FIELDS)} (our names, "
                     f"mapped to the file's header names).")
  wanted = {f: str(columns.get(f, f)).strip().lower() for f in FIELDS}
  missing = [f for f in FIELDS if wanted[f] not in names]
  if missing:
    what = ", ".join(repr(wanted[f]) + ("" if wanted[f] == f else f" (for {f!r})")
                     for f in missing)
    use = ", ".join(f"{f!r}: NAME" for f in missing)
    raise _fail(path, f"has no column{'s' * (len(missing) > 1)} {what}; the header is "
                      f"{names}. Name the file's columns with columns={{{use}}}, NAME "
                      f"a header name.")
  for f in FIELDS:
    if names.count(wanted[f]) > 1:
      raise _fail(path, f"header {names} holds {wanted[f]!r} ({f}) more than once; "
                        f"rename one or map {f!r} to another column with columns=.")
  return {f: names.index(wanted[f]) for f in FIELDS}


def _allowed(one_based: bool, arms: int | None) -> str:
  base = int(one_based)
  if arms is None:
    return f"integers >= {base} (one_based={one_based})"
  return f"integers {base} .. {arms - 1 + base} (one_based={one_based}, arms={arms})"


def _choice(path, number, text, one_based, arms) -> int:
  """The 0-based choice in `text` at file line `number`; ValueError naming what is
  allowed (and an off-by-one of `one_based` when it looks like one)."""
  where = f"line {number}: choice {text!r}"
  raw = _integer(text.strip())
  if raw is None:
    raise _fail(path, f"{where} is not an integer; allowed: {_allowed(one_based, arms)}.")
  c = raw - int(one_based)
  if one_based and raw == 0:
    raise _fail(path, f"{where} is below 1; allowed: {_allowed(one_based, arms)}. The "
                      f"file looks 0-based: pass one_based=False.")
  if c < 0:
    raise _fail(path, f"{where} is negative; allowed: {_allowed(one_based, arms)}.")
  if arms is not None and c >= arms:
    hint = (" A choice equal to arms looks 1-based: pass one_based=True."
            if not one_based and raw == arms else "")
    raise _fail(path, f"{where} is out of range; allowed: {_allowed(one_based, arms)}."
                      f"{hint}")
  return c


def read(path: str, *, one_based: bool, arms: int | None = None,
         columns: dict | None = None) -> Choices:
  """The choices recorded in the file at `path` (layout above). `one_based`: whether the
  file numbers arms from 1; `arms`: the number of arms, checked against every choice
  (None: unchecked, the arms being the largest choice + 1, at least 2); `columns`: {our
  field: the file's header name} for fields named otherwise. ValueError naming the line,
  the value and what is allowed."""
  if arms is not None and (isinstance(arms, bool) or not isinstance(arms, int)
                           or arms < 2):
    raise ValueError(f"arms={arms!r} must be an integer >= 2 (or None to infer it).")
  path = os.fspath(path)
  trials = {}  # subject -> {trial: (line, choice, reward)}; dicts keep first appearance
  with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet exports
    first, delimiter, names = _header(path, f)
    index = _column_indices(path, names, columns)
    reader = csv.reader(f, delimiter=delimiter)
    for row in reader:
      number = first + reader.line_num
      if not any(cell.strip() for cell in row):
        continue
      if len(row) != len(names):
        raise _fail(path, f"line {number} has {len(row)} fields; the header (line "
                          f"{first}) has {len(names)}: {names}.")
      subject = row[index["subject"]].strip()
      if not subject:
        raise _fail(path, f"line {number}: the subject id is empty.")
      text = row[index["trial"]]
      trial = _integer(text.strip())
      if trial is None:
        raise _fail(path, f"line {number}: trial {text!r} is not an integer; allowed: "
                          f"integer trial numbers, which order each subject's rows.")
      choice = _choice(path, number, row[index["choice"]], one_based, arms)
      text = row[index["outcome"]]
      try:
        reward = float(text)
      except ValueError:
        reward = math.nan
      if not math.isfinite(reward):
        raise _fail(path, f"line {number}: outcome {text!r} is not a finite number; "
                          f"allowed: a float reward on every row (0/1 in most bandits).")
      rows = trials.setdefault(subject, {})
      if trial in rows:
        raise _fail(path, f"subject {subject!r} has trial {trial} twice (lines "
                          f"{rows[trial][0]} and {number}); allowed: one row per trial.")
      rows[trial] = (number, choice, reward)
  if not trials:
    raise _fail(path, "has a header but no data rows; one row per trial is expected.")
  length = max(len(rows) for rows in trials.values())
  choice = np.full((len(trials), length), -1, np.int32)
  reward = np.zeros((len(trials), length), np.float32)
  mask = np.zeros((len(trials), length), bool)
  for s, rows in enumerate(trials.values()):
    ordered = [rows[t] for t in sorted(rows)]
    choice[s, :len(ordered)] = [c for _, c, _ in ordered]
    reward[s, :len(ordered)] = [r for _, _, r in ordered]
    mask[s, :len(ordered)] = True
  return Choices(subject=np.asarray(list(trials), dtype=str), choice=choice,
                 reward=reward, mask=mask)


def write(path: str, choices: Choices, *, one_based: bool) -> None:
  """Writes `choices` in the layout `read` takes (header subject, trial, choice,
  outcome; recorded trials only, numbered from 1 if `one_based` else 0, as the choices):
  tab-separated if `path` ends in .tsv or .txt, else comma-separated."""
  path = os.fspath(path)
  subject = np.asarray(choices.subject)
  choice, reward, mask = (np.asarray(choices.choice), np.asarray(choices.reward),
                          np.asarray(choices.mask, bool))
  if (subject.ndim != 1 or choice.ndim != 2 or len(choice) != len(subject)
      or not choice.shape == reward.shape == mask.shape):
    raise ValueError(f"choices: subject {subject.shape}, choice {choice.shape}, reward "
                     f"{reward.shape}, mask {mask.shape}; subject [S] and [S, T] for the "
                     f"others are expected.")
  ids = [str(name) for name in subject.tolist()]
  if len(set(ids)) != len(ids) or any(not i or i != i.strip() for i in ids):
    raise ValueError(f"choices: subject ids {ids}; distinct non-empty ids without "
                     f"surrounding spaces are expected (read strips them and merges "
                     f"repeats).")
  if (choice[mask] < 0).any() or not np.isfinite(reward[mask]).all():
    raise ValueError("choices: a recorded trial (mask True) holds a negative choice or a "
                     "non-finite reward.")
  delimiter = "\t" if path.lower().endswith((".tsv", ".txt")) else ","
  base = int(one_based)
  with open(path, "w", newline="", encoding="utf-8") as f:
    out = csv.writer(f, delimiter=delimiter, lineterminator="\n")
    out.writerow(FIELDS)
    for s, name in enumerate(ids):
      for t in np.flatnonzero(mask[s]):
        # The shortest text that reads back as the same float32.
        r = np.format_float_positional(np.float32(reward[s, t]), trim="-")
        out.writerow([name, int(t) + base, int(choice[s, t]) + base, r])
