"""Progress for long loops: a tqdm bar on a terminal, periodic log lines elsewhere.

tqdm redraws its bar with `\\r`, which a log file keeps as thousands of partial lines (a
2,000-step quickstart log was 209 KB). When stderr is not a terminal, `Progress` writes
one plain line every `interval` seconds (and at the end) instead. Updating it never
reads a device value, so it costs no host sync.
"""

from __future__ import annotations

import sys
import time


class Progress:
  """`update(n)`, `set_postfix(**kv)`, `close()`; `enabled=False` makes every call a no-op."""

  def __init__(self, total: int | None, desc: str, *, unit: str = "it", initial: int = 0, interval: float = 30.0,
               enabled: bool = True, stream=None):
    self.total, self.desc, self.unit, self.n = total, desc, unit, initial
    self.interval, self.enabled = interval, enabled
    self.stream = stream or sys.stderr
    self._postfix: dict = {}
    self._bar = None
    self._start = self._last = time.time()
    self._start_n = initial
    if enabled and self.stream.isatty():
      from tqdm import tqdm

      self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream)

  def update(self, n: int = 1) -> None:
    if not self.enabled:
      return
    self.n += n
    if self._bar is not None:
      self._bar.update(n)
    elif time.time() - self._last >= self.interval:
      self._line()

  def set_postfix(self, **kv) -> None:
    if not self.enabled:
      return
    self._postfix = kv
    if self._bar is not None:
      self._bar.set_postfix(**kv)

  def _line(self) -> None:
    now = time.time()
    rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
    of = f"/{self.total}" if self.total else ""
    extra = "".join(f" {k}={v}" for k, v in self._postfix.items())
    print(f"{self.desc}: {self.n}{of} {self.unit} ({rate:.3g} {self.unit}/s, {now - self._start:.0f} s){extra}",
          file=self.stream, flush=True)
    self._last = now

  def close(self) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    elif self.n > self._start_n:
      self._line()
    self.enabled = False

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
