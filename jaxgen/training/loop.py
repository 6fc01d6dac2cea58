"""`train_and_evaluate(config, workdir)`: the whole VAE run, resumable; `evaluate_checkpoint` for --mode=eval."""

from __future__ import annotations

import functools
import json
import logging
import time
from pathlib import Path

import jax
import numpy as np

from jaxgen import config as config_lib
from jaxgen import data, models, objectives, parallel
from jaxgen.evaluation import vae as vae_eval
from jaxgen.objectives import vae as vae_obj
from jaxgen.reporting import images, plots
from jaxgen.reporting.writer import MetricWriter
from jaxgen.training import checkpoint, optim
from jaxgen.training import state as state_lib
from jaxgen.training import step as step_lib
from jaxgen.training import workdir as wd

log = logging.getLogger("jaxgen")


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN or Inf loss or gradient; the run stopped before saving it."""


class _Run:
    """What a run builds once from its config: data, model, optimizer, mesh and compiled functions."""

    def __init__(self, config, workdir: Path):
        config_lib.check(config)
        self.config, self.workdir = config, workdir
        self.mesh = parallel.make_mesh()
        parallel.check_batch(config.train.batch_size, self.mesh)
        parallel.check_batch(config.eval.batch_size, self.mesh, "eval.batch_size")
        self.objective = objectives.get(config.objective.name)
        vae_obj.likelihood(config.objective)  # an unknown likelihood fails here, before any work
        self.train = data.load(config.data, config.data.train_split)
        self.test = data.load(config.data, config.data.test_split)
        if len(self.train) < config.train.batch_size:
            raise ValueError(f"train split has {len(self.train)} examples, fewer than train.batch_size="
                             f"{config.train.batch_size}; lower the batch size")
        self.model = models.build(config.model, self.train.shape)
        self.tx, self.lr = optim.make(config.optim, config.train.steps)
        self.create = functools.partial(state_lib.create, self.model, self.tx, self.train.shape, config.seed,
                                        config.train.ema_decay > 0)
        self.replicated = parallel.replicated(self.mesh)
        n_eval = config.eval.num_examples or len(self.test)
        self.eval_images = self.test.image[:n_eval]

    def restore(self):
        """(checkpoint manager, newest readable state or None), placed on this run's mesh."""
        target = checkpoint.abstract_like(jax.eval_shape(self.create), self.replicated)
        return checkpoint.restore_newest(self.workdir, self.config.checkpoint, target)

    def restore_or_init(self):
        mgr, state = self.restore()
        if state is None:
            state = jax.jit(self.create, out_shardings=self.replicated)()
            log.info("Starting a new run in %s", self.workdir)
        else:
            log.info("Resumed from the checkpoint at step %d", int(state["step"]))
        return mgr, state

    @functools.cached_property
    def eval_fn(self):
        c = self.config
        return vae_eval.compile_eval(self.mesh, model=self.model, obj_cfg=c.objective, binarize=c.data.binarize,
                                     nll_chunk=c.eval.nll_chunk)

    def evaluate(self, state, nll_k: int) -> dict:
        key = jax.random.fold_in(jax.random.key(self.config.seed), state_lib.EVAL_STREAM)
        return vae_eval.evaluate(self.eval_fn, state_lib.eval_params(state), self.eval_images, mesh=self.mesh,
                                 key=key, batch_size=self.config.eval.batch_size, nll_k=nll_k,
                                 nll_chunk=self.config.eval.nll_chunk)

    def save_images(self, state, suffix: str = "") -> None:
        """Samples, reconstructions (and at the end the latent plots) into <workdir>/images."""
        if jax.process_index() != 0:
            return
        c, params = self.config, state_lib.eval_params(state)
        out = self.workdir / "images"
        out.mkdir(exist_ok=True)
        lik = c.objective.likelihood
        key = jax.random.fold_in(jax.random.key(c.seed), state_lib.EVAL_STREAM + 1)  # the same z at every eval
        n = c.output.num_samples
        images.save_png(out / f"samples{suffix}.png",
                        np.asarray(vae_eval.sample_images(params, key, model=self.model, n=n, likelihood=lik)))
        x = self.test.image[: min(n, 32)].astype(np.float32) / 255.0
        rec = np.asarray(vae_eval.reconstruct(params, x, model=self.model, likelihood=lik))
        images.save_png(out / f"reconstructions{suffix}.png", np.concatenate([x, rec]), ncol=len(x))
        if suffix or not c.output.plots:
            return
        m = min(len(self.test), 2000)
        mu = np.concatenate([np.asarray(vae_eval.encode_mean(params, self.test.image[i : i + 500] / np.float32(255),
                                                             model=self.model)) for i in range(0, m, 500)])
        plots.latent_scatter(mu, self.test.label[:m], self.workdir / "latent_scatter.png")
        dims = min(self.model.latent_dim, 10)
        trav = vae_eval.traversal(params, mu[0], model=self.model, likelihood=lik, dims=dims, steps=9)
        images.save_png(self.workdir / "latent_traversal.png", np.asarray(trav), ncol=9)
        plots.loss_curves(self.workdir / "metrics.jsonl", self.workdir / "loss_curves.png")


def _first_nonfinite(metrics: dict) -> tuple[int, list[str]] | None:
    """(step, names of non-finite metrics) of the first step in stacked host metrics with finite == 0."""
    bad = np.flatnonzero(np.asarray(metrics["finite"]) == 0)
    if not len(bad):
        return None
    i = bad[0]
    names = sorted((k for k, v in metrics.items() if not np.isfinite(np.asarray(v)[i])), key=lambda k: (k != "loss", k))
    return int(np.asarray(metrics["step"])[i]), names or ["grad_norm"]


def train_and_evaluate(config, workdir) -> dict:
    """Trains (resuming from <workdir>/checkpoints if any), evaluates, writes outputs. Returns the final eval."""
    workdir = wd.prepare(workdir)
    wd.setup_logging(workdir)
    run = _Run(config, workdir)
    c = config
    wd.save_config(c, workdir)
    log.info("%d devices (%d processes); global batch %d; train %s %s, %d images; test %d images",
             jax.device_count(), jax.process_count(), c.train.batch_size, c.data.name, run.train.shape,
             len(run.train), len(run.test))
    mgr, state = run.restore_or_init()
    train_fn = step_lib.compile_train(
        run.mesh, steps_per_dispatch=c.train.steps_per_dispatch, model=run.model, tx=run.tx,
        objective=run.objective, obj_cfg=c.objective, lr_schedule=run.lr, batch=c.train.batch_size,
        binarize=c.data.binarize, ema_decay=c.train.ema_decay)
    train_data = parallel.put_replicated({"image": run.train.image}, run.mesh)
    writer = MetricWriter(workdir)
    step = start = int(jax.device_get(state["step"]))
    k = c.train.steps_per_dispatch
    if (c.train.steps - step) % k:
        raise ValueError(f"train.steps - resumed step ({c.train.steps} - {step}) must be a multiple of "
                         f"train.steps_per_dispatch={k}")
    bar = None
    if c.output.progress and jax.process_index() == 0 and step < c.train.steps:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=c.train.steps, initial=step, unit="step", dynamic_ncols=True)
    pending, window, previous = [], [], None
    t_log, step_log, t0 = time.perf_counter(), step, time.perf_counter()
    try:
        while step < c.train.steps:
            state, metrics = train_fn(state, train_data)
            step += k
            if previous is not None:  # one call behind, so the device stays busy while the host checks
                _check_finite(jax.device_get(previous), mgr, workdir)
            previous = metrics
            pending.append(metrics)
            if bar is not None:
                bar.update(k)
            done = step == c.train.steps
            due_log = step % c.train.log_every == 0 or done
            due_ckpt = step % c.checkpoint.every == 0 or done
            if due_log or due_ckpt:
                host = jax.device_get(pending)
                for m in host:
                    _check_finite(m, mgr, workdir)
                window.extend(host)
                pending, previous = [], None
            if due_log:
                now = time.perf_counter()
                ips = (step - step_log) * c.train.batch_size / max(now - t_log, 1e-9)
                t_log, step_log = now, step
                means = {name: float(np.mean([np.mean(m[name]) for m in window])) for name in window[0]
                         if name not in ("finite", "step")}
                window = []
                writer.write(step, "train", {**means, "img_per_s": ips})
                if bar is not None:
                    bar.set_postfix(loss=f"{means['loss']:.2f}", img_s=f"{ips:,.0f}")
            if due_ckpt:  # every step so far was checked finite: the state is safe to keep
                checkpoint.save(mgr, state, force=True)
            if c.eval.every and step % c.eval.every == 0 and not done:
                ev = run.evaluate(state, c.eval.nll_k)
                writer.write(step, "eval", ev)
                log.info("step %d eval: elbo %.2f nll(k=%d) %.2f", step, ev["elbo"], c.eval.nll_k, ev["nll"])
                run.save_images(state, suffix=f"_{step:07d}")
    finally:
        if bar is not None:
            bar.close()
        mgr.wait_until_finished()
    train_time = time.perf_counter() - t0
    final = _final_eval(run, state, writer)
    mgr.close()
    writer.close()
    steps_run = step - start
    log.info("Done: %d steps this invocation in %.1f s (%.0f img/s incl. compile, evals); final test ELBO %.2f, "
             "NLL(k=%d) %.2f nats (%.4f bits/dim) on %d images; outputs in %s", steps_run, train_time,
             steps_run * c.train.batch_size / max(train_time, 1e-9), final["elbo"], c.eval.final_nll_k,
             final["nll"], final["nll_bits_per_dim"], final["num_examples"], workdir)
    return final


def _check_finite(host_metrics: dict, mgr, workdir: Path) -> None:
    found = _first_nonfinite(host_metrics)
    if found is None:
        return
    bad_step, names = found
    mgr.wait_until_finished()
    good = mgr.latest_step()
    kept = f"the last good checkpoint (step {good}) is kept in {workdir / 'checkpoints'}" if good is not None \
        else "no checkpoint had been written yet"
    raise NonFiniteLossError(
        f"non-finite {', '.join(names)} at step {bad_step}: training stopped and that update was not applied; "
        f"{kept}. Lower optim.lr or set optim.clip_norm, then run the same command to resume."
    )


def _final_eval(run: _Run, state, writer: MetricWriter) -> dict:
    c = run.config
    t = time.perf_counter()
    final = run.evaluate(state, c.eval.final_nll_k)
    final["eval_seconds"] = time.perf_counter() - t
    step = int(jax.device_get(state["step"]))
    writer.write(step, "eval", final)
    if jax.process_index() == 0:
        record = {"step": step, "dataset": c.data.name, "split": c.data.test_split,
                  "params": "ema" if "ema_params" in state else "raw", "units": "nats per image", **final}
        (run.workdir / "eval.json").write_text(json.dumps(record, indent=2) + "\n")
    run.save_images(state)
    return final


def evaluate_checkpoint(config, workdir) -> dict:
    """--mode=eval: the final evaluation and images of the newest checkpoint in `workdir`."""
    workdir = wd.prepare(workdir)
    wd.setup_logging(workdir)
    run = _Run(config, workdir)
    mgr, state = run.restore()
    if state is None:
        mgr.close()
        raise FileNotFoundError(f"no readable checkpoint in {workdir / 'checkpoints'}; train first "
                                "(the same command without --mode=eval)")
    writer = MetricWriter(workdir)
    final = _final_eval(run, state, writer)
    writer.close()
    mgr.close()
    log.info("eval of step %d: %s", int(jax.device_get(state["step"])), json.dumps(final))
    return final
