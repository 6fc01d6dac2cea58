"""VAE evaluation on a test split, data-parallel over the mesh: test ELBO, importance-sampled NLL, reconstruction.

All numbers are per image, in nats (bits per dimension beside the NLL; the reconstruction's squared error per pixel
of x / 255). The test set's binarization comes from a key of its own, the same for every run whatever its seed (the
test set models are compared on), and the latent noise from the run's key, so two evaluations of the same params give
the same numbers.
"""

from __future__ import annotations

import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jaxgen import parallel
from jaxgen.data import device as dev
from jaxgen.models import vae as vae_models
from jaxgen.objectives import vae as vae_obj
from jaxgen.parallel import AXIS

# key(eval.binarize_seed) folded with it binarizes the test set. It equals the training state's EVAL_STREAM (its
# EVAL_NOISE stream), whose key of the run's seed binarized it before it had a seed of its own: runs with seed 0 keep
# their numbers. The two are told apart by the substreams of each example's key (0 here, 1 and 2 for the noise).
BINARIZE_STREAM = 3


def decode_pieces(local_batch: int, chunk: int, backend: str | None = None) -> int:
    """Into how many pieces `chunk_logsumexp` splits a chunk of `local_batch * chunk` decodes: on XLA:CPU the most
    that keep at least CPU_DECODES_PER_PIECE decodes each (pieces divide the chunk), elsewhere 1."""
    if (backend or jax.default_backend()) != "cpu":
        return 1
    fits = [p for p in range(1, chunk + 1) if chunk % p == 0 and local_batch * chunk // p >= CPU_DECODES_PER_PIECE]
    return max(fits, default=1)


# XLA:CPU (jax 0.10.2, 2 cores, --xla_cpu_experimental_ynn_fusion_type=) decoded the conv VAE's latents at 9.3k/s
# ten thousand at once and at 23.7k/s in a lax.map over pieces of 125 (the activations stay in the caches); the
# quickstart's eval, 200 a piece: 8.9k -> 17.6k decodes/s.
CPU_DECODES_PER_PIECE = 128


def _eval_body(params, key, binarize_key, image, label, pos, mask, c, valid, *, model, obj_cfg, binarize, nll_chunk):
    """Per device: (sums of the per-example metrics over the batch, psum'd, computed with chunk 0 and zero for the
    other chunks; this device's logsumexp of the log importance weights of NLL chunk `c` [local batch]). A
    class-conditional model is scored with each image's own label: its metrics are of p(x | y)."""
    model = vae_models.bind_labels(model, label)
    keys = dev.example_keys(key, pos)
    x = eval_inputs(image, pos, binarize_key, binarize)
    lik = vae_obj.likelihood(obj_cfg)

    def metric_sums():
        mu, logvar = model.apply(params, x, method="encode")
        z, eps = vae_obj.draw_latents(mu, logvar, dev.substream(keys, 1), 1)
        rec = lik(model.apply(params, z[:, 0], method="decode"), x, obj_cfg)
        # The KL to the model's prior: closed-form to N(0, I), at the drawn z for a prior of its own (VampPrior).
        kl = (vae_obj.posterior_log_prob(eps, logvar) - vae_obj.prior_log_prob(params, z, model))[:, 0] \
            if vae_obj.has_own_prior(model) else vae_obj.gaussian_kl(mu, logvar)
        out_mu = model.apply(params, mu, method="decode")
        mean_img = vae_obj.mean_image(obj_cfg.likelihood)(out_mu)
        per_example = {
            "elbo": rec - kl,
            "kl": kl,
            "rec_nll": -rec,
            "recon_nll_at_mean": -lik(out_mu, x, obj_cfg),
            # Against the pixels' intensities, not their binarization: E[(m - b)^2] = (m - x)^2 + x (1 - x) would
            # add the binarization's own variance (0.020 per pixel on mnist_5k's test digits) to every model's score.
            "recon_mse": jnp.mean((mean_img - image.astype(jnp.float32) / 255.0) ** 2, axis=(1, 2, 3)),
        }
        sums = {k: jnp.sum(jnp.where(mask, v, 0.0)) for k, v in per_example.items()}
        sums["count"] = jnp.sum(mask.astype(jnp.float32))
        return sums

    # Once per batch, not per NLL chunk: the zeros branch costs nothing. Jitted, so that its shapes and the branch
    # come from one trace of it (the model's encoder and two decodes), not two.
    metric_sums = jax.jit(metric_sums)
    sums = lax.cond(c == 0, metric_sums, lambda: jax.tree.map(jnp.zeros_like, jax.eval_shape(metric_sums)))
    lse = vae_obj.chunk_logsumexp(params, x, dev.substream(keys, 2), c, model=model, cfg=obj_cfg, chunk=nll_chunk,
                                  valid=valid, pieces=decode_pieces(x.shape[0], nll_chunk))
    return lax.psum(sums, AXIS), lse


def compile_eval(mesh, *, model, obj_cfg, binarize: str, nll_chunk: int):
    """The jitted, data-parallel eval of one batch and one NLL chunk. Build once per run."""
    body = functools.partial(_eval_body, model=model, obj_cfg=obj_cfg, binarize=binarize, nll_chunk=nll_chunk)
    # check_vma=False as in every jaxgen step (pmap's semantics): the model's layers need not track which values
    # vary over the devices (conv_impl='xla' transposes a convolution with jax.linear_transpose, whose input spec
    # carries none).
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS), P(),
                                                            P()),
                                 out_specs=(P(), P(AXIS)), check_vma=False))


def eval_inputs(image_u8, pos, binarize_key, binarize: str):
    """The evaluated test images: uint8 [B, H, W, C] at positions `pos` of the test split -> float in [0, 1], each
    binarized ('dynamic') from fold_in(binarize_key, its position): one fixed stochastic binarization of the test
    set, whatever the batch, the device count or the run's seed (Burda et al.'s code draws it once from a fixed
    seed)."""
    return dev.preprocess(image_u8, dev.substream(dev.example_keys(binarize_key, pos), 0), binarize)


def binarize_key(seed: int) -> jax.Array:
    """The test set binarization's key for `eval.binarize_seed`."""
    return jax.random.fold_in(jax.random.key(seed), BINARIZE_STREAM)


@jax.jit
def _masked_nll_sum(lse, mask, log_k):
    """Sum over the real rows of -log p(x) = log k - logsumexp(log weights). The rows stay sharded over the devices
    (of every process): only the scalar comes back."""
    return jnp.sum(jnp.where(mask, log_k - lse, 0.0))


def evaluate(eval_fn, params, images: np.ndarray, *, mesh, key, binarize_key, batch_size: int, nll_k: int,
             nll_chunk: int, likelihood: str, progress: bool = False,
             labels: np.ndarray | None = None) -> dict[str, float]:
    """Means over `images` (uint8 [N, H, W, C]) of the test metrics, with the NLL from `nll_k` importance samples.
    labels (int [N]): the images' classes, which a class-conditional model is scored with (else unread).

    key: the latent noise's; binarize_key: the test set's binarization (`eval_inputs`).
    eval_fn: from compile_eval with the same nll_chunk. Adds nll, nll_bits_per_dim, nll_k and num_examples.
    nll_bits_per_dim is nll / (D ln 2) for the Bernoulli likelihood (a probability of the binarized pixels) and the
    discretized logistic (a probability of the 8-bit pixels, comparable with published bits/dim). The
    Gaussian likelihood's nll is a density of x / 255 in [0, 1], which can be negative; its bits per dim are those
    of the 8-bit pixels with probability density x 1/255 (the pixel's bin width), (nll + D ln 255) / (D ln 2): a
    midpoint-rule estimate of the discretized Gaussian, not a bound, and not comparable with published
    dequantized bits/dim (Theis et al. 2016). A user's likelihood gets nll / (D ln 2).
    progress: a tqdm bar of the decodes (images x nll_k) on process 0: the final eval's k=1000 takes minutes on a
    CPU (vae_mnist's 10k test digits: ~10 minutes on 2 cores).
    """
    parallel.check_batch(batch_size, mesh, "eval.batch_size")
    n = images.shape[0]
    totals: dict[str, float] = {}
    nll_sum = 0.0
    labels = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
    # On a terminal only, as the training bar: tqdm's redraws (\r) would bury a log file under nohup or a scheduler
    bar = tqdm(total=n * nll_k, desc=f"NLL (k={nll_k})", unit="decode", unit_scale=True, leave=False,
               disable=not (progress and sys.stderr.isatty()) or jax.process_index() != 0)
    with bar:  # closed on an error or a signal too
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            label = labels[start : start + batch_size]
            valid = chunk.shape[0]
            if valid < batch_size:  # pad the last batch to the compiled shape; padded rows are masked out
                chunk = np.concatenate([chunk, np.zeros((batch_size - valid, *chunk.shape[1:]), chunk.dtype)])
                label = np.concatenate([label, np.zeros(batch_size - valid, np.int32)])
            pos = np.arange(start, start + batch_size, dtype=np.int32)
            mask = np.arange(batch_size) < valid
            batch = parallel.put_batch({"image": chunk, "label": label, "pos": pos, "mask": mask}, mesh)
            acc = None
            for c in range(-(-nll_k // nll_chunk)):
                sums, lse = eval_fn(params, key, binarize_key, batch["image"], batch["label"], batch["pos"],
                                    batch["mask"], np.int32(c), np.int32(min(nll_chunk, nll_k - c * nll_chunk)))
                # At most two chunks in flight: the device stays busy, and no wait of the host's is long. Python runs a
                # SIGTERM or Ctrl-C handler only between its own steps, and a wait for all of a batch's chunks at once
                # (eval.final_nll_k / nll_chunk of them) would hold it back for all of them. XLA:CPU queues only a few
                # calls anyway (the old loop stopped within 0.2 s of a SIGTERM here); an accelerator's queue is deeper.
                jax.block_until_ready(acc)
                acc = lse if acc is None else jnp.logaddexp(acc, lse)
                bar.update(valid * min(nll_chunk, nll_k - c * nll_chunk))  # dispatched: at most two calls ahead
                if c == 0:
                    for k, v in jax.device_get(sums).items():
                        totals[k] = totals.get(k, 0.0) + float(v)
            nll_sum += float(_masked_nll_sum(acc, batch["mask"], math.log(nll_k)))
    count = totals.pop("count")
    out = {k: v / count for k, v in totals.items()}
    out["nll"] = nll_sum / count
    dims = math.prod(images.shape[1:])
    per_bin = dims * math.log(255.0) if likelihood == "gaussian" else 0.0
    out["nll_bits_per_dim"] = (out["nll"] + per_bin) / (dims * math.log(2))
    out["nll_k"] = nll_k
    out["num_examples"] = int(count)
    return out


@functools.partial(jax.jit, static_argnames=("model", "likelihood"))
def sample_images(params, z, labels=None, *, model, likelihood: str):
    """Images [n, H, W, C] in [0, 1]: the likelihood's mean at the latents z [n, latent_dim] (and, for a
    class-conditional model, of the classes labels int [n])."""
    model = vae_models.bind_labels(model, labels)
    return vae_obj.mean_image(likelihood)(model.apply(params, z, method="decode"))


@functools.partial(jax.jit, static_argnames=("model", "likelihood"))
def reconstruct(params, x, labels=None, *, model, likelihood: str):
    """Reconstructions [B, H, W, C] in [0, 1] of float images x (of the classes `labels` for a class-conditional
    model): the decoder's mean at z = mu(x)."""
    model = vae_models.bind_labels(model, labels)
    mu, _ = model.apply(params, x, method="encode")
    return vae_obj.mean_image(likelihood)(model.apply(params, mu, method="decode"))


@functools.partial(jax.jit, static_argnames=("model",))
def encode_mean(params, x, labels=None, *, model):
    """The posterior means mu(x) [B, latent_dim] of float images x (given their `labels` when class-conditional)."""
    return vae_models.bind_labels(model, labels).apply(params, x, method="encode")[0]


@functools.partial(jax.jit, static_argnames=("model", "likelihood", "dims", "steps"))
def traversal(params, z0, label=None, *, model, likelihood: str, dims, steps: int):
    """Images [len(dims) * steps, H, W, C]: row r moves latent dims[r] (a tuple) of z0 from -3 to 3, the others
    fixed (a class-conditional model decodes them all with the class `label`, an int)."""
    if getattr(model, "num_classes", 0):
        model = vae_models.bind_labels(model, jnp.full((len(dims) * steps,), label, jnp.int32))
    dims = jnp.asarray(dims)
    rows = dims.shape[0]
    vals = jnp.linspace(-3.0, 3.0, steps)
    z = jnp.tile(z0[None, None], (rows, steps, 1))
    z = z.at[jnp.arange(rows)[:, None], jnp.arange(steps)[None], dims[:, None]].set(
        jnp.broadcast_to(vals[None], (rows, steps))
    )
    return vae_obj.mean_image(likelihood)(model.apply(params, z.reshape(rows * steps, -1), method="decode"))


def most_active(mu: np.ndarray, n: int) -> tuple[int, ...]:
    """The `n` latents whose posterior means vary most over the images `mu` [N, D] comes from, most first: the
    active units of Burda et al. 2016 (Cov_x E_q[z_d] > 0.01); the others are near the prior for every image, and
    a traversal of them shows nothing."""
    return tuple(int(d) for d in np.argsort(-np.var(mu, axis=0), kind="stable")[:n])  # traversal's static dims
