"""ACGAN (Odena et al. 2017, model.d_conditioning='ac'): D's auxiliary classifier head and its class logits, the
cross-entropy terms of both updates against a hand computation, their weight reaching G, a run through the trainer,
and the config's checks. The sharded step with them is in test_gan.py (test_sharded_gan_step_equals_one_device)."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import config_check, parallel
from jaxgen.models import gan
from jaxgen.objectives import gan as gan_obj
from jaxgen.parallel import AXIS
from jaxgen.training import gan_step, loop
from tests.conftest import gan_mnist_config
from tests.test_conditional_gan import _model
from tests.test_gan import _gan_setup, _smoke


@pytest.mark.parametrize("name,shape", [("dcgan", (28, 28, 1)), ("resnet", (32, 32, 3))])
def test_an_ac_discriminator_has_a_class_head_instead_of_the_projection(name, shape):
    """Its class logits are a Dense of the features D's last Dense reads; the labels do not change its adversarial
    output; its variables hold no sown entry."""
    _, d = gan.build(_model(name, d_conditioning="ac"), shape)
    x = jax.random.normal(jax.random.key(1), (4, *shape))
    y = jnp.array([0, 1, 2, 0])
    # Jitted: one program each, not one per op run eagerly.
    variables = jax.jit(lambda: gan.init_variables(d, jax.random.key(0), x, y, train=False))()
    assert "intermediates" not in variables and "class_embedding" not in variables["params"]
    assert variables["params"]["class_head"]["kernel"].shape[-1] == 3

    @jax.jit
    def outputs(variables):
        out, _, logits = gan.apply_with_class_logits(d, variables, x, False, y)
        other, _ = gan.apply_model(d, variables, x, False, (y + 1) % 3)
        return out, logits, other

    out, logits, other = outputs(variables)
    assert logits.shape == (4, 3) and logits.dtype == jnp.float32 and out.shape == (4,)
    np.testing.assert_array_equal(out, other)  # the labels reach only the cross-entropy, not D's logit
    _, projection = gan.build(_model(name), shape)
    with pytest.raises(ValueError, match="sowed no class logits"):  # raised while tracing: nothing compiled
        pv = jax.eval_shape(lambda: gan.init_variables(projection, jax.random.key(0), x, y, train=False))
        jax.eval_shape(lambda pv: gan.apply_with_class_logits(projection, pv, x, False, y), pv)


def test_the_class_logits_of_a_built_in_d_inside_a_users_d_are_found_and_two_heads_are_refused():
    """A D of the user's that wraps a built-in one sows the logits under the submodule's path; one that calls the
    class head twice per call gets an error saying so."""
    import flax.linen as nn  # noqa: PLC0415

    _, inner = gan.build(_model("dcgan", d_conditioning="ac"), (28, 28, 1))

    class Wrapper(nn.Module):
        twice: bool = False

        @nn.compact
        def __call__(self, x, y, train=True):
            d = inner.clone(parent=self, name="inner")
            out = d(x, y, train=train)
            return out + d(x, y, train=train) if self.twice else out

    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    y = jnp.array([0, 1, 2, 0])
    # Jitted: one program each, not one per op run eagerly.
    variables = jax.jit(lambda: gan.init_variables(Wrapper(), jax.random.key(0), x, y, train=False))()

    @jax.jit
    def logits_and_direct(variables):
        _, _, logits = gan.apply_with_class_logits(Wrapper(), variables, x, False, y)
        _, _, direct = gan.apply_with_class_logits(inner, {k: v["inner"] for k, v in variables.items()}, x, False, y)
        return logits, direct

    np.testing.assert_array_equal(*logits_and_direct(variables))
    with pytest.raises(ValueError, match=r"sowed class logits 2 times \(at inner\); D's class head is called once"):
        jax.eval_shape(lambda v: gan.apply_with_class_logits(Wrapper(twice=True), v, x, False, y), variables)


def test_the_ac_terms_are_the_cross_entropy_and_accuracy_of_the_class_logits():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.4, 3.0]])
    labels = jnp.array([0, 1])
    # Jitted: one program, not one per op run eagerly.
    terms, optax_ce = jax.jit(lambda logits, labels: (
        gan_step.ac_terms(logits, labels, "ac_real"),
        jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))))(logits, labels)
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(1, keepdims=True)
    np.testing.assert_allclose(terms["ac_real"], -np.mean(np.log(p[[0, 1], [0, 1]])), rtol=1e-6)
    assert float(terms["ac_real_acc"]) == 0.5
    np.testing.assert_allclose(terms["ac_real"], optax_ce, rtol=1e-6)


def test_the_weight_reaches_both_updates():
    """One step with loss.ac_weight 0 and 1 from the same state: G's and D's params differ (each update adds the
    cross-entropy), and the logged terms are there either way."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    rng = np.random.default_rng(0)
    data = parallel.put_replicated({"image": (rng.random((64, 28, 28, 1)) * 255).astype(np.uint8),
                                    "label": rng.integers(0, 10, 64).astype(np.int32)}, mesh)
    seen = []
    for weight in (0.0, 1.0):
        state, fn = _gan_setup(mesh, **{"model.num_classes": 10, "model.d_conditioning": "ac",
                                        "loss.ac_weight": weight})
        state = jax.device_put(state, parallel.replicated(mesh))
        new, metrics = fn(state, data)
        seen.append((jax.device_get(new), jax.device_get(metrics)))
    (s0, m0), (s1, m1) = seen
    assert "ac_g" not in m0 and np.isfinite(m1["ac_g"][0]) and np.isfinite(m1["ac_real"][0])
    head0, head1 = s0["d"]["params"]["class_head"], s1["d"]["params"]["class_head"]
    assert not np.allclose(head0["kernel"], head1["kernel"])  # the weight 0 run leaves the head untrained
    g0, g1 = jax.tree.leaves(s0["g"]["params"]), jax.tree.leaves(s1["g"]["params"])
    assert any(not np.allclose(a, b) for a, b in zip(g0, g1))


def test_gs_update_adds_the_cross_entropy_of_ds_class_head_on_its_fakes():
    """g_update alone, from the same state and fakes (D fixed): with ac_weight 1 the fakes' gradient is that of
    g_loss + CE(class logits of D on the fakes, their labels), written out here; with 0 it is g_loss's alone."""
    _, d = gan.build(_model("dcgan", d_conditioning="ac"), (28, 28, 1))
    y = jnp.array([0, 1, 2, 1])
    fake = jnp.tanh(jax.random.normal(jax.random.key(2), (4, 28, 28, 1)))
    d_vars = jax.jit(lambda: gan.init_variables(d, jax.random.key(3), fake, y, train=False))()  # one program
    loss = gan_obj.get_loss("non_saturating")
    keys = jax.random.split(jax.random.key(4), 4)

    def fake_grad(weight):  # G's "params" are the fakes themselves: g_vjp passes their gradient through
        tx = optax.sgd(1.0)
        params = jnp.zeros_like(fake)
        state = {"g": {"params": params}, "d": d_vars, "g_opt": tx.init(params)}
        new = jax.vmap(lambda _: gan_step.g_update(
            state, fake, lambda ct: (ct,), jnp.zeros(4), keys, discriminator=d, g_tx=tx, loss_fn=loss,
            augment_policy="", labels=y, ac_weight=weight)[0], axis_name=AXIS, axis_size=1)(jnp.zeros(1))
        return -new["g"]["params"][0]  # one SGD step of rate 1 from zeros: minus the gradient

    def direct(x, weight):
        out, _, logits = gan.apply_with_class_logits(d, d_vars, x, True, y)
        ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
        return loss(jnp.zeros(4), out)[1] + weight * ce

    @jax.jit  # both weights' gradients and their hand computations in one program, not one per op run eagerly
    def grads():
        return [(fake_grad(weight), jax.grad(direct)(fake, weight)) for weight in (0.0, 1.0)]

    (grad0, want0), (grad1, want1) = grads()
    np.testing.assert_allclose(grad0, want0, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(grad1, want1, rtol=1e-4, atol=1e-7)
    assert not np.allclose(grad0, grad1)


def test_gan_mnist_acgan_trains_and_logs_the_auxiliary_classifier(tmp_path, one_device):
    c = gan_mnist_config("acgan,smoke", **{"train.steps": 6, "train.log_every": 3})
    loop.train_and_evaluate(c, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    assert train and all(0.0 <= r["ac_real_acc"] <= 1.0 and np.isfinite(r["ac_g"]) for r in train)
    assert (tmp_path / "eval.json").is_file()


def test_the_config_checks_the_ac_discriminator(caplog):
    with pytest.raises(ValueError, match=r"model.d_conditioning='ac' gives D an auxiliary classifier .* "
                                         r"--config.model.num_classes=N"):
        config_check.check(_smoke(**{"model.d_conditioning": "ac"}))
    with pytest.raises(ValueError, match=r"unknown model.d_conditioning 'aux'; choices: projection, ac"):
        gan.build(_model("dcgan", d_conditioning="aux"), (28, 28, 1))
    with pytest.raises(ValueError, match=r"loss.ac_weight must be >= 0"):
        config_check.check(_smoke(**{"model.num_classes": 10, "model.d_conditioning": "ac", "loss.ac_weight": -1.0}))
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(_smoke(**{"model.num_classes": 10, "loss.ac_weight": 2.0}))
    assert "loss.ac_weight=2.0 (read by an auxiliary-classifier D, model.d_conditioning='ac'; this run's is " \
           "'projection')" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(_smoke(**{"model.num_classes": 10, "model.d_conditioning": "ac", "loss.ac_weight": 0.0}))
    assert "with loss.ac_weight=0: D ignores the labels" in caplog.text
