"""jaxgen.training.trained.load: a trained workdir's model in Python, read-only, with the samples --mode=sample
writes."""

import logging
import os
import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.training import loop, modes, trained
from tests.conftest import CONFIGS, ROOT, config_module

README = ROOT / "README.md"
# What trained.load gives does not depend on the device count (its sharded sampling: tests/test_quality.py): one
# device, as a user's notebook has.
pytestmark = pytest.mark.usefixtures("one_device")


def _files(workdir):
    return {p: p.stat().st_mtime_ns for p in [workdir, *workdir.rglob("*")]}


def test_a_vae_loads_read_only_and_samples_as_mode_sample_does(trained_vae):
    c, workdir = trained_vae
    before = _files(workdir)
    run = trained.load(c, workdir)
    assert _files(workdir) == before  # nothing written: no log, no lock, no folder
    assert run.step == 10 and run.checkpoint == "newest" and run.discriminator is None
    x = jnp.full((3, 28, 28, 1), 0.5)

    @jax.jit  # one program, not one per op of the model run outside jit
    def encode_decode(variables, x):
        mean, logvar = run.model.apply(variables, x, method=run.model.encode)
        return mean, logvar, run.model.apply(variables, mean, method=run.model.decode)

    mean, logvar, decoded = encode_decode(run.variables, x)
    assert mean.shape == logvar.shape == (3, run.model.latent_dim)
    assert decoded.shape[0] == 3
    c.sample.num = 8
    written = np.load(modes.sample_checkpoint(c, workdir))
    # --mode=sample from Python leaves no log file attached to jaxgen's logger (what follows is not its)
    assert not [h for h in logging.getLogger("jaxgen").handlers if isinstance(h, logging.FileHandler)]
    np.testing.assert_array_equal(run.samples(8), written["images"])
    assert float(written["truncation"]) == 0.0
    # The truncation trick: the same samples as --mode=sample's with it, other than the untruncated ones.
    c.sample.truncation = 0.5
    truncated = np.load(modes.sample_checkpoint(c, workdir))
    assert float(truncated["truncation"]) == 0.5
    np.testing.assert_array_equal(run.samples(8, truncation=0.5), truncated["images"])
    assert not np.array_equal(truncated["images"], written["images"])


def test_the_readmes_example_runs(trained_vae, monkeypatch):
    """README, "A trained model in Python", as written, on a smoke run instead of the quickstart's."""
    block = re.search(r"### A trained model in Python\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    call = 'trained.load(vae_mnist.get_config("mnist_5k"), "runs/quickstart")'
    assert call in block
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # runtime.setup() adds to it: put it back
    c, workdir = trained_vae
    scope = {"CONFIG": c, "WORKDIR": workdir}
    exec(block.replace(call, "trained.load(CONFIG, WORKDIR)"), scope)  # noqa: S102 (the README's own code)
    assert scope["images"].shape == (64, 28, 28, 1) and scope["mean"].shape == (8, scope["run"].model.latent_dim)
    assert 0 <= float(scope["reconstructions"].min()) <= float(scope["reconstructions"].max()) <= 1


def test_load_names_what_is_missing_or_different(trained_vae, tmp_path):
    c, workdir = trained_vae
    with pytest.raises(ValueError, match="unknown checkpoint 'last'; choices: newest, best"):
        trained.load(c, workdir, "last")
    with pytest.raises(FileNotFoundError, match=r"there is no workdir at .*nowhere; train one first"):
        trained.load(c, tmp_path / "nowhere")
    assert trained.load(c, workdir, "best").step == 10  # kept by the test ELBO at the last step
    shutil.rmtree(workdir / "best")
    with pytest.raises(FileNotFoundError, match=r"has no best/ folder; a run keeps a best checkpoint only with"):
        trained.load(c, workdir, "best")
    with pytest.raises(TypeError, match="config must be an ml_collections.ConfigDict"):
        trained.load(c.to_dict(), workdir)
    c.model.latent_dim += 1
    with pytest.raises(ValueError, match=r"trained.load: the given model differs from the one the workdir was "
                                         r"trained with .* in: model.latent_dim: 10 -> 11"):
        trained.load(c, workdir)
    assert not (tmp_path / "nowhere").exists()


def test_a_gan_loads_its_g_with_its_ema_and_its_d(tmp_path):
    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    c.unlock()
    c.output.progress, c.output.plots, c.eval.extractors = False, False, ()
    c.train.steps, c.eval.every = 4, 0
    loop.train_and_evaluate(c, tmp_path)
    before = _files(tmp_path)
    run = trained.load(c, tmp_path)
    assert _files(tmp_path) == before
    # G's EMA weights, with BatchNorm statistics re-estimated for them (the state's were gathered with the raw ones)
    assert run.step == 4 and "ema_g" in run.state
    chex.assert_trees_all_equal(run.variables["params"], run.state["ema_g"]["params"])
    assert not np.array_equal(jax.tree.leaves(run.variables["batch_stats"])[0],
                              jax.tree.leaves(run.state["ema_g"]["batch_stats"])[0])

    @jax.jit  # one program, not one per op of G and D run outside jit
    def g_then_d(variables, d_variables):
        images = run.model.apply(variables, jax.random.normal(jax.random.key(0), (5, run.model.latent_dim)),
                                 train=False)
        return images, jnp.abs(images).max(), run.discriminator.apply(d_variables, images, train=False)

    images, largest, scores = g_then_d(run.variables, run.d_variables)
    assert images.shape == (5, 28, 28, 1) and float(largest) <= 1.0
    assert scores.shape[0] == 5
    samples = run.samples(6)
    assert samples.shape == (6, 28, 28, 1) and samples.dtype == np.uint8
    c.sample.num = 6
    np.testing.assert_array_equal(samples, np.load(modes.sample_checkpoint(c, tmp_path))["images"])
    assert run.config.is_locked and repr(run).startswith("TrainedRun(workdir=")
