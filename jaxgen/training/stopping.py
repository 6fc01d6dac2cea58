"""Stopping a run on notice: SIGTERM (a scheduler's or a preemptible machine's) and Ctrl-C's SIGINT, polled by the
training loop (jaxgen.training.loop) between compiled calls, so that the state it reached is checkpointed first."""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys

import jax

log = logging.getLogger("jaxgen")


class RunStopped(Exception):
    """The run was asked to stop (SIGTERM, or Ctrl-C's SIGINT) and did, after checkpointing the step it had
    reached. `signum`: the signal; a command-line program exits with 128 + signum (143, 130) as the signal would."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}, checkpointed; the same command resumes it")
        self.step, self.signum = step, int(signum)


class Terminated(BaseException):
    """SIGTERM outside the training loop (loading data, compiling, restoring, the final evaluation, --mode=eval or
    --mode=sample; `sigterm_raises`): the run stops at once, with no checkpoint of its own; those written before
    stay, and the same command resumes from the newest. A BaseException, as KeyboardInterrupt: the handlers of
    errors (a checkpoint that fails to read is moved aside) must not take it for one."""

    signum = int(signal.SIGTERM)

    def __init__(self):
        super().__init__("stopped by SIGTERM outside the training loop, at once: no checkpoint of the step reached "
                         "(those written before stay)")


# A Terminated (or Ctrl-C's KeyboardInterrupt) raised where Python swallows exceptions (a __del__ method, a gc
# callback such as JAX's: "Exception ignored in ...") is raised again after this many seconds, by SIGALRM, until it
# leaves `sigterm_raises`'s block.
RETRY_SECONDS = 0.05


@contextlib.contextmanager
def sigterm_raises():
    """SIGTERM raises `Terminated` in the main thread while the block runs, so that a scheduler's notice before or
    after the training loop ends the run with a log line and the workdir's lock released, not silently. Only in a
    single process where SIGTERM has its default handler: the processes of a jax.distributed job keep the default
    (or JAX's preemption notifier), since one that unwinds alone would wait for the others at a collective. The
    training loop's StopRequest takes SIGTERM over for its duration (a stop after the current call, checkpointed).
    After the first, SIGTERM has its default again: a second ends the process.

    Python runs a signal's handler between any two of its steps in the main thread, also inside a finalizer or a
    garbage collector's callback, which swallow the handler's exception (1 of 30 SIGTERMs during --mode=eval here,
    in JAX's gc callback: the evaluation went on as if the signal had never come). A swallowed Terminated or
    KeyboardInterrupt is raised again (SIGALRM, RETRY_SECONDS later) until it leaves the block."""
    retry = False
    try:
        installed = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and jax.process_count() == 1
        if installed:
            signal.signal(signal.SIGTERM, _raise_terminated)
            retry = signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # a handler of the user's is left be
            if retry:
                signal.signal(signal.SIGALRM, _raise_again)
    except ValueError:  # not the main thread
        installed = False
    hook = sys.unraisablehook
    if retry:
        sys.unraisablehook = functools.partial(_unraisable, hook)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if retry:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            sys.unraisablehook = hook
            _swallowed.clear()


_swallowed: list[type[BaseException]] = []  # the stop that Python swallowed, until it is raised again


def _raise_terminated(signum, frame):
    del signum, frame
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def _raise_again(signum, frame):
    del signum, frame
    if _swallowed:
        raise _swallowed.pop()()


def _unraisable(hook, unraisable) -> None:
    """sys.unraisablehook while `sigterm_raises` runs: a Terminated or KeyboardInterrupt that Python swallowed is
    raised again soon, in the main thread's code."""
    if isinstance(unraisable.exc_value, (Terminated, KeyboardInterrupt)):
        _swallowed[:] = [type(unraisable.exc_value)]
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        return
    hook(unraisable)


class StopRequest:
    """SIGTERM (a scheduler's or a preemptible machine's notice) and SIGINT (Ctrl-C) as a flag the loop polls
    between compiled calls.

    One process: Python handlers, installed for the loop's duration (in the main thread only). A second signal
    restores the previous handlers and delivers itself (SIGTERM ends the process, or raises `Terminated` under
    `sigterm_raises`, as launch.py runs; Ctrl-C raises KeyboardInterrupt), so a run that does not stop in time
    still can be stopped.
    Several processes: JAX's preemption service (on by default with jax.distributed) catches SIGTERM and agrees
    with the other processes on the call at which all stop (multihost_utils.reached_preemption_sync_point); Ctrl-C
    keeps its default there (one process cannot checkpoint alone)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum, self.previous = None, {}

    def install(self) -> None:
        if jax.process_count() > 1:
            return
        for sig in self.SIGNALS:
            try:
                previous = signal.getsignal(sig)
                # None: a handler installed outside Python (JAX's preemption notifier); SIG_IGN: ignored on purpose
                # (a background job's SIGINT). Leave both be.
                if previous is None or previous is signal.SIG_IGN:
                    continue
                signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the signal keeps its default
                continue
            self.previous[sig] = previous

    def uninstall(self) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous = {}

    def _handle(self, signum, frame):
        del frame
        if self.signum is not None:  # a second notice: let the signal do what it did before
            self.uninstall()
            signal.raise_signal(signum)
            return
        what = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        log.warning("%s: stopping after the current compiled call (or evaluation); the state will be checkpointed "
                    "(%s again stops at once)", what, what)
        self.signum = signum

    def arrived(self) -> int | None:
        """One process: the signal that arrived since the loop last asked `requested`, or None (the loop asks
        after an evaluation, to stop at its step instead of after one more call). Several: None; the processes
        agree on the calls to stop after (`requested`), and this call's agreement was reached before the eval."""
        return self.signum if jax.process_count() == 1 else None

    def requested(self, call: int) -> int | None:
        """The signal to stop for after compiled call number `call` (counted from 1 in this invocation), or None."""
        if jax.process_count() == 1:
            return self.signum
        from jax.experimental import multihost_utils  # noqa: PLC0415

        try:
            return signal.SIGTERM if multihost_utils.reached_preemption_sync_point(call) else None
        except RuntimeError:  # jax_enable_preemption_service is off: SIGTERM ends the processes as it would
            return None
