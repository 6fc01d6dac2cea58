"""How a training run shows its progress: a tqdm bar on a terminal, and a line per train record."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

import jax

from jaxgen import runtime

log = logging.getLogger("jaxgen")


class Progress:
    """How a training run shows its progress: a tqdm bar on a terminal (process 0, output.progress), and a log line
    per train record, in the log file always and on the terminal when no bar shows the same numbers."""

    def __init__(self, config, headline: tuple[str, ...], step: int):
        """`headline`: the names of the metrics a record's line shows (the task's headline), `step`: the first."""
        c = config
        self.config, self.headline, self.bar, self._redirect = config, tuple(headline), None, contextlib.ExitStack()
        self._eval_seconds: list[float] = []  # of this invocation's evaluations during training
        # A terminal only: redirected to a file (nohup, SLURM) the bar's redraws would bury the log lines, which carry
        # the same numbers. On the terminal the log lines are written above the bar, not glued to it.
        if c.output.progress and jax.process_index() == 0 and step < c.train.steps and sys.stderr.isatty():
            from tqdm import tqdm  # noqa: PLC0415
            from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: PLC0415

            self.bar = tqdm(total=c.train.steps, initial=step, unit="step", dynamic_ncols=True)
            before = set(log.handlers)
            self._redirect.enter_context(logging_redirect_tqdm(loggers=[log]))
            for handler in set(log.handlers) - before:  # tqdm's stand-in for the console handler: the same filter
                handler.addFilter(runtime.not_file_only)  # (tqdm 4.67 copies the console handler's; older may not)

    def update(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def evaluated(self, seconds: float) -> None:
        """An evaluation during training took `seconds`: the ETA counts the evaluations to come at their mean."""
        self._eval_seconds.append(seconds)

    def record(self, step: int, means: dict, img_per_s: float) -> None:
        """A train record's line: 'step 2000/10000 (20%): loss 98.31; 3,812 img/s; ETA 00:03:32 + final eval' (the
        headline metrics averaged since the last record; the ETA: the steps left at that window's rate, as
        `img_per_s` measures it, plus the evaluations during training still to come, at the mean time of those this
        invocation ran, once one has run ('+ evals' until then); the final evaluation is not timed yet, so named:
        vae_mnist's, 10k digits x 1000 importance samples, takes ~10 minutes on a 2-core CPU)."""
        c, head = self.config, {h: means[h] for h in self.headline}
        eta = (c.train.steps - step) * c.train.batch_size / max(img_per_s, 1e-9)
        untimed = " + final eval"
        if c.eval.every:  # the evaluations at the multiples of eval.every before the end, this step's included (a
            # record is written before its step's evaluation)
            evals_left = max((c.train.steps - 1) // c.eval.every - (step - 1) // c.eval.every, 0)
            if self._eval_seconds:
                eta += evals_left * sum(self._eval_seconds) / len(self._eval_seconds)
            elif evals_left:
                untimed = " + evals" + untimed
        line = (f"step {step}/{c.train.steps} ({100 * step / c.train.steps:.0f}%): "
                + ", ".join(f"{name} {value:.4g}" for name, value in head.items())
                + f"; {img_per_s:,.0f} img/s; ETA "
                + (time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 86400 else f"{eta / 3600:.0f} h") + untimed)
        log.info("%s", line, extra={runtime.FILE_ONLY: self.bar is not None})
        if self.bar is not None:
            self.bar.set_postfix({**{h: f"{v:.3g}" for h, v in head.items()}, "img_s": f"{img_per_s:,.0f}"})

    def close(self) -> None:
        self._redirect.close()
        if self.bar is not None:
            self.bar.close()
