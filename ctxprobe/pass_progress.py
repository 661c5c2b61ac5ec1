"""Progress inside one pass: the layer loop says how many layers are done, and a sweep's bar
shows it with an estimate, so a long cell (a 64K native cell takes minutes) does not sit at 0/1.

The runner calls `layer_done(done, total, tokens)` after each layer (and with done=0 when the
loop starts); whoever wants to see it installs a listener with `listen(...)`. Without one the
call costs a global read. Torch-free, so a sweep imports it without importing the runner.
One listener for the process: the native backend runs one pass at a time.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

Listener = Callable[[int, int, int], None]   # (layers done, layers in all, prompt tokens)
_listener: Listener | None = None


def layer_done(done: int, total: int, tokens: int) -> None:
    if _listener is not None:
        _listener(done, total, tokens)


@contextmanager
def listen(listener: Listener):
    """Install `listener` for the passes run inside the block (in any thread)."""
    global _listener
    previous, _listener = _listener, listener
    try:
        yield listener
    finally:
        _listener = previous


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class BarPostfix:
    """A tqdm bar's postfix: the sweep's own figures, then the pass now running, e.g.
    '312 tok/s, 0 errors | 65,536-token pass: layer 12/48, ~3m10s left'.

    The estimate is the pass's time per layer so far times the layers left. The bar is redrawn
    when a pass starts and then at most once a second (a short pass changes layers faster than
    anyone reads); `clock` is injectable for tests."""

    def __init__(self, bar, *, min_interval: float = 1.0, clock=time.monotonic):
        self.bar, self.min_interval, self.clock = bar, min_interval, clock
        self.sweep_text = self.pass_text = ""
        self._started = self._drawn = None

    def sweep(self, text: str) -> None:
        """The sweep's figures changed (a cell finished); the bar's own update redraws it."""
        self.sweep_text = text
        self._set(refresh=False)

    def __call__(self, done: int, total: int, tokens: int) -> None:
        now = self.clock()
        if done == 0:
            self._started = now
            self.pass_text = f"{tokens:,}-token pass: layer 0/{total}"
            self._set(refresh=True)
            self._drawn = now
            return
        if done >= total:   # the pass is over: its cells show in the count
            self.pass_text = ""
            self._set(refresh=False)
            return
        left = (now - self._started) / done * (total - done) if self._started is not None else None
        self.pass_text = (f"{tokens:,}-token pass: layer {done}/{total}"
                          + (f", ~{_duration(left)} left" if left is not None else ""))
        due = self._drawn is None or now - self._drawn >= self.min_interval
        self._set(refresh=due)
        if due:
            self._drawn = now

    def _set(self, *, refresh: bool) -> None:
        text = " | ".join(t for t in (self.sweep_text, self.pass_text) if t)
        self.bar.set_postfix_str(text, refresh=refresh)
