"""Checks of input and output paths that entry points run before any slow work.

Every CLI checks all its paths first (inputs exist, outputs have the right suffix and a
folder to go in), so a typo costs a second, not a model load or a minute of scoring.
"""

from __future__ import annotations

import os
from typing import Sequence


class InputError(ValueError):
  """An input file that cannot be used; the message names the file and the problem."""


def require_file(path: str, what: str) -> str:
  """`path` if it is an existing file, else an `InputError` naming it and what it should be."""
  if not path:
    raise InputError(f"no {what} given")
  if not os.path.exists(path):
    raise InputError(f"{path}: no such {what}")
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, expected a {what}")
  return path


def require_dir(path: str, what: str) -> str:
  if not path:
    raise InputError(f"no {what} given")
  if not os.path.isdir(path):
    raise InputError(f"{path}: no such {what}")
  return path


def prepare_output(path: str, what: str, suffixes: Sequence[str] = ()) -> str:
  """Checks an output path's suffix and creates its folder; returns the absolute path."""
  if not path:
    raise InputError(f"no {what} given")
  if suffixes and not path.endswith(tuple(suffixes)):
    raise InputError(f"{path}: {what} must end in {' or '.join(suffixes)}")
  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, expected a {what} file name")
  parent = os.path.dirname(path)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise InputError(f"{parent}: cannot create the folder for {what} ({e.strerror})") from None
  if not os.access(parent, os.W_OK):
    raise InputError(f"{parent}: not writable (for {what})")
  return path
