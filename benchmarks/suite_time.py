"""Benchmark: the fast test suite's time in this working tree against a reference commit, same session.

The suite's time moves with the machine's speed on the day (the same commit's suite, 151
tests of 55bd6c9, took 9 min of pytest on this project's 2-core VM on 2026-11-30 and 21-23
min on 2026-12-03), so two commits are compared only in one run of this script, one after the other.

The reference commit is checked out into a temporary git worktree (`../shared` linked beside
it, as tests expect) and its suite runs first; then this working tree's, as it is
(uncommitted changes included). Both run the README's test command, `python -m pytest -q
-p no:cacheprovider`, with this interpreter, each with its own pytest options (the reference
may predate the worker processes). Printed for each: tests passed, pytest's own time, wall
time, user+system CPU of the run and its children, the load average before and after; then
the ratio (working tree / reference; below 1: the working tree's suite is faster).

  python -m benchmarks.suite_time --reference=55bd6c9   # main when issue 13 was filed
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
from benchmarks.inference import load_avg  # noqa: E402

SUMMARY = re.compile(r"(\d+) passed.* in ([\d.]+)s")


def run_suite(label: str, cwd: str) -> dict:
  """The README's test command in `cwd`: its summary line's figures, wall and CPU time."""
  print(f"[{label}] {cwd}: python -m pytest -q -p no:cacheprovider; before: {load_avg()}", flush=True)
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.monotonic()
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=cwd,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  wall = time.monotonic() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
  found = SUMMARY.findall(proc.stdout)
  if proc.returncode != 0 or not found:
    raise SystemExit(f"[{label}] the suite in {cwd} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}")
  passed, pytest_s = int(found[-1][0]), float(found[-1][1])
  print(f"[{label}] {passed} passed, pytest {pytest_s:.0f} s ({pytest_s / 60:.1f} min), wall {wall:.0f} s, "
        f"CPU {cpu:.0f} s; after: {load_avg()}", flush=True)
  return {"passed": passed, "pytest_s": pytest_s, "wall_s": wall, "cpu_s": cpu}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reference", required=True, help="a git revision of this repository")
  args = p.parse_args(argv)
  rev = subprocess.run(["git", "rev-parse", "--verify", f"{args.reference}^{{commit}}"], cwd=ROOT,
                       capture_output=True, text=True)
  if rev.returncode != 0:
    raise SystemExit(f"--reference={args.reference}: not a commit of {ROOT}: {rev.stderr.strip()}")
  commit = rev.stdout.strip()
  print(f"reference {commit[:12]}, then the working tree {ROOT}", flush=True)
  tmp = tempfile.mkdtemp(prefix="suite_time_")
  tree = os.path.join(tmp, "repo")
  try:
    subprocess.run(["git", "worktree", "add", "--quiet", "--detach", tree, commit], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    shared = os.path.join(os.path.dirname(ROOT), "shared")
    if os.path.isdir(shared):
      os.symlink(shared, os.path.join(tmp, "shared"))
    ref = run_suite(f"reference {commit[:12]}", tree)
  finally:
    subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    shutil.rmtree(tmp, ignore_errors=True)
  cur = run_suite("working tree", ROOT)
  print(f"working tree / reference: pytest time x{cur['pytest_s'] / ref['pytest_s']:.2f}, "
        f"CPU x{cur['cpu_s'] / ref['cpu_s']:.2f} ({cur['passed']} tests against {ref['passed']})")


if __name__ == "__main__":
  main()
