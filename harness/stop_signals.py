"""Ctrl-C (SIGINT) and SIGTERM of `emmil ablate` / `emmil sweep` (issue 13): stop cleanly, not half-way.

A user presses Ctrl-C; a batch scheduler sends SIGTERM before its grace period ends. Either way the
driver must stop its trials within seconds, close every unfinished MLflow run and Optuna trial as
interrupted (never FINISHED, never left RUNNING), deliver buffered metrics, say how to resume and exit
128 + the signal number (130 / 143).

How: inside `deferred()` (ablate: from Ray's start on; sweep: the whole run) the first signal is only
recorded; the Tune loop polls it through harness.ray_tune.StopOnSignalOrFullDisk (Tune checks
`stop_all` every step, so trials stop within about a second) and the driver's code after Tune returns
takes the interrupted path. Outside it (ablate's data loading) nothing needs closing, so a signal
raises KeyboardInterrupt at once, as Python's default Ctrl-C does. A second signal always raises at
once: the user insists.

Tune's own SIGINT handler is switched off (TUNE_DISABLE_SIGINT_HANDLER, harness.ray_tune): it would
replace ours while Tune runs and handles neither SIGTERM nor our bookkeeping.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: int | None = None  # the first stop signal received while handlers are installed
_deferring = 0  # depth of deferred() blocks
_installed = False  # inside handling(): reinstall() puts the handlers back


def requested() -> int | None:
    """The signal number asked to stop (SIGINT / SIGTERM), None when none was received."""
    return _requested


def name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else ""


def exit_code(signum: int | None = None) -> int:
    """128 + the signal number, the shell's convention (130 Ctrl-C, 143 SIGTERM)."""
    return 128 + int(signum or _requested or signal.SIGINT)


def _on_signal(signum, frame) -> None:
    global _requested
    first = _requested is None
    if first:
        _requested = signum
    if first and _deferring:
        print(f"\n{name(signum)} received: stopping the running trials and closing their runs as interrupted "
              "(send it again to quit at once)", file=sys.stderr, flush=True)
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Install the handlers for SIGINT and SIGTERM (main thread only), restore the previous ones after."""
    global _requested
    if threading.current_thread() is not threading.main_thread():
        yield  # signal.signal would raise; signals go to the main thread's handlers anyway
        return
    global _installed
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    _requested, _installed = None, True
    reinstall()
    try:
        yield
    finally:
        _installed = False
        for s, handler in previous.items():
            signal.signal(s, handler)


def reinstall() -> None:
    """Put our handlers back after a library replaced them: ray.init installs its own SIGTERM handler
    in the driver (it logs "SIGTERM received" and exits 1, closing nothing). No-op outside handling()."""
    if _installed and threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            signal.signal(s, _on_signal)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While a run is open: a first stop signal is recorded (polled by `requested()`), not raised."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
