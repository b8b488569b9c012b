"""Graceful stop on SIGINT / SIGTERM: finish the current step, save, exit cleanly.

Inside ``with GracefulStop() as stop:`` the first SIGINT or SIGTERM only sets
``stop.requested``; the training loop checks it between steps. A second signal of the same kind
restores the default behaviour (a second Ctrl-C interrupts at once). Handlers are installed only
in the main thread and restored on exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)


class GracefulStop:
    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> None:
        self.signals = signals
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # second signal: give back control to the default behaviour
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: stopping after the current step", self.signal_name)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
