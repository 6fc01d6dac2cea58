"""A trained workdir's model in Python (a notebook, a script of your own): `load(config, workdir)` restores its newest
(or best) checkpoint as --mode=sample does, read-only, and gives the Flax module with the variables to apply it
with, and samples (the same as --mode=sample's after `jaxgen.runtime.setup()`, launch.py's XLA flags).

    from configs import vae_mnist
    from jaxgen.training import trained

    run = trained.load(vae_mnist.get_config("mnist_5k"), "runs/quickstart")
    images = run.samples(64)                                        # uint8 [64, 28, 28, 1]
    mean, logvar = run.model.apply(run.variables, x, method=run.model.encode)   # x: floats [B, 28, 28, 1] in [0, 1]
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxgen import config as config_lib
from jaxgen import parallel
from jaxgen.training import loop, run_record
from jaxgen.training import state as state_lib


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedRun:
    """A checkpoint of a workdir, restored onto this process's devices (replicated).

    model, variables: the generative model and what `model.apply` takes: a VAE's module (`encode`, `decode`,
    `latent_dim`; a class-conditional VAE's methods take the labels too, `encode(x, labels)`, `decode(z, labels)`)
    and its params, or a GAN's G (`G.apply(variables, z, train=False)`, z ~ N(0, I) [B, latent_dim];
    a class-conditional G's `G.apply(variables, z, labels, train=False)`, labels int [B] in [0, model.num_classes):
    not checked inside the compiled model, where one outside gives NaN or a G of no class);
    the EMA weights where the run kept them (unless config.train.ema_half_life=0), a G's BatchNorm statistics
    re-estimated for them as its evaluations do. discriminator, d_variables: a GAN's D (None for a VAE), on images
    in [-1, 1]; training and evaluation run it in train mode (BatchNorm over the batch, across the devices), so
    `train=False` (its running averages) scores a BatchNorm D otherwise than they did. state: the whole train
    state (optimizer state, key, raw weights). config: a locked copy of the one given."""

    config: ml_collections.ConfigDict = dataclasses.field(repr=False)
    workdir: Path
    checkpoint: str
    step: int
    model: nn.Module = dataclasses.field(repr=False)
    variables: dict = dataclasses.field(repr=False)
    discriminator: nn.Module | None = dataclasses.field(repr=False)
    d_variables: dict | None = dataclasses.field(repr=False)
    state: dict = dataclasses.field(repr=False)
    _task: object = dataclasses.field(repr=False)

    def samples(self, n: int, truncation: float | None = None, classes: tuple[int, ...] | None = None) -> np.ndarray:
        """n samples, uint8 [n, H, W, C]: the same as `--mode=sample --config.sample.num=n` writes with this config's
        seed (a VAE: its likelihood's mean at z from its prior, or from the sample.latents='gmm' mixture; a GAN:
        G(z); a class-conditional model: sample j of class j % model.num_classes, see `sample_labels`). truncation: z's
        coordinates truncated to [-t, t] (default: the config's sample.truncation, 0 = off). classes: a
        class-conditional model's classes to draw in turn, e.g. (7,) (default: the config's sample.classes, () = every
        class)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        t = self.config.sample.truncation if truncation is None else truncation
        return self._task.samples(self.state, n, t, self._classes(classes))

    def latent_mixture(self) -> dict | None:
        """What a VAE's `samples` draw z from as a Gaussian mixture (numpy arrays `log_weights` [K], `means` [K, D],
        `scale_tril` [K, D, D], for `jaxgen.evaluation.latent_mixture.draw`): with the config's sample.latents='gmm'
        the mixture fit as --mode=sample fits it, else a VampPrior model's prior (model.prior='vamp'); None for
        N(0, I) and for a GAN."""
        return self._task.latent_mixture(self.state) if hasattr(self._task, "latent_mixture") else None

    def sample_labels(self, n: int, classes: tuple[int, ...] | None = None) -> np.ndarray | None:
        """The classes of `samples(n, classes=classes)`, int32 [n], for a class-conditional model; None otherwise."""
        return self._task.sample_labels(n, self._classes(classes))

    def _classes(self, classes) -> tuple[int, ...]:
        return tuple(self.config.sample.get("classes", ()) if classes is None else classes)


def load(config: ml_collections.ConfigDict, workdir: str | Path, checkpoint: str | None = None) -> TrainedRun:
    """The `checkpoint` ('newest' or 'best'; default: config.eval.checkpoint, 'newest' in every shipped config) of
    the run in `workdir`, trained with `config` (the training command's config file and variants, with its overrides
    set: `config.model.latent_dim = 3`). Nothing in the workdir is written; the dataset is not read (the image shape
    comes from the workdir's data.json; a workdir from before jaxgen wrote it reads the dataset, as --mode=eval does),
    except the train split of a VAE with sample.latents='gmm', whose mixture is fit to its images' posterior means.

    As with --mode=sample, a config whose model differs from the trained one (another width or activation) is an
    error naming the fields; other differences (another dataset or likelihood) are a warning. FileNotFoundError
    when the workdir or a readable checkpoint is missing."""
    if not isinstance(config, ml_collections.ConfigDict):
        raise TypeError(f"config must be an ml_collections.ConfigDict (a config file's get_config(...)), got "
                        f"{type(config).__name__}")
    if checkpoint is None:
        checkpoint = config_lib.eval_checkpoint(config)
    if checkpoint not in loop.CHECKPOINT_DIRS:
        raise ValueError(f"unknown checkpoint {checkpoint!r}; choices: {', '.join(loop.CHECKPOINT_DIRS)}")
    config = config.copy_and_resolve_references()  # the run's own: a later change to the caller's changes nothing
    config.lock()
    workdir = Path(workdir).expanduser().absolute()
    where = workdir / loop.CHECKPOINT_DIRS[checkpoint]
    parallel.check_same_on_every_process(  # every process takes the same branch: what follows has collectives
        f"whether {where} exists", [int(where.is_dir())], "Every process must see the same workdir: put it on a "
        "filesystem all hosts share.")
    if not workdir.is_dir():
        raise FileNotFoundError(f"trained.load: there is no workdir at {workdir}; train one first (python launch.py "
                                f"--config=... --workdir={workdir})")
    if not where.is_dir():  # checked first: the checkpoint manager would create the folder
        hint = ("a run keeps a best checkpoint only with eval.extractors, eval.swd or checkpoint.best_metric set"
                if checkpoint == "best" else "train first (the same launch.py command resumes a run)")
        raise FileNotFoundError(f"trained.load: {workdir} has no {loop.CHECKPOINT_DIRS[checkpoint]}/ folder; {hint}")
    shape = run_record.trained_image_shape(workdir)
    run_record.warn_config_drift(config, workdir, "load", data_read=shape is None)
    task = loop.build_task(config, workdir, training=False, image_shape=shape)
    mgr, state = loop.restore(task, checkpoint)
    mgr.close()
    if state is None:
        raise FileNotFoundError(f"trained.load: no readable checkpoint in {where}")
    gan = "g" in state
    return TrainedRun(
        config=config, workdir=workdir, checkpoint=checkpoint, step=int(jax.device_get(state["step"])),
        model=task.generator if gan else task.model,
        variables=task.sampling_g(state) if gan else state_lib.eval_params(state),
        discriminator=task.discriminator if gan else None, d_variables=state["d"] if gan else None,
        state=state, _task=task)
