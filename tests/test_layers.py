"""ConvTranspose2x against the definition of a stride-2 transposed convolution; conv_down2x against XLA's conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models.layers import ConvTranspose2x


def _reference(x, w, padding):
    """y[2i + k - padding] += x[i] w[k], the definition PyTorch's ConvTranspose2d computes."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    y = np.zeros((n, 2 * h + k, 2 * wd + k, w.shape[-1]))
    for i in range(h):
        for j in range(wd):
            for ky in range(k):
                for kx in range(k):
                    y[:, 2 * i + ky, 2 * j + kx] += x[:, i, j] @ w[ky, kx]
    return y[:, padding : padding + 2 * h, padding : padding + 2 * wd]


@pytest.mark.parametrize("impl", ["phase", "xla"])
@pytest.mark.parametrize("kernel,padding", [(3, 1), (4, 1), (2, 0), (5, 2)])
def test_conv_transpose_2x_equals_the_definition(kernel, padding, impl):
    m = ConvTranspose2x(5, kernel_size=kernel, padding=padding, use_bias=False, impl=impl)
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 3)).astype(np.float32)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    assert y.shape == (2, 8, 6, 5)
    np.testing.assert_allclose(y, _reference(x, np.asarray(v["params"]["kernel"]), padding), atol=1e-5)


def test_conv_transpose_2x_rejects_sizes_that_do_not_double():
    with pytest.raises(ValueError, match="does not double"):
        ConvTranspose2x(4, kernel_size=3, padding=0).init(jax.random.key(0), np.zeros((1, 2, 2, 1), np.float32))


@pytest.mark.parametrize("kernel,padding,size", [(4, 1, 8), (2, 0, 6), (6, 2, 8)])
def test_conv_down2x_has_the_gradients_of_xlas_strided_conv(kernel, padding, size):
    from jaxgen.models.layers import _conv_down, conv_down2x

    rng = np.random.default_rng(kernel)
    x = jnp.asarray(rng.standard_normal((3, size, size, 4)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 4, 5)), jnp.float32)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, padding)))
    np.testing.assert_allclose(conv_down2x(x, w, padding), _conv_down(x, w, padding), rtol=1e-6)
    for a, b in zip(jax.grad(loss(conv_down2x), (0, 1))(x, w), jax.grad(loss(_conv_down), (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_down2x_rejects_what_it_cannot_do():
    from jaxgen.models.layers import ConvDown2x

    with pytest.raises(ValueError, match="needs an even K"):
        ConvDown2x(4, kernel_size=3, padding=1).init(jax.random.key(0), np.zeros((1, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="must be even"):
        ConvDown2x(4).init(jax.random.key(0), np.zeros((1, 5, 5, 1), np.float32))


def test_conv_impls_agree_in_value_and_gradient_and_unknown_ones_are_refused():
    from jaxgen.models.layers import ConvDown2x

    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 3)), jnp.float32)
    for cls in (ConvTranspose2x, ConvDown2x):
        v = cls(4, kernel_size=4, padding=1, impl="phase").init(jax.random.key(0), x)
        outs = []
        for impl in ("phase", "xla", "auto"):
            m = cls(4, kernel_size=4, padding=1, impl=impl)
            f = lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x)))
            outs.append((f(v, x), *jax.grad(f, (0, 1))(v, x)))
        for other in outs[1:]:
            for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(other)):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="choices: auto, phase, xla"):
        ConvTranspose2x(4, kernel_size=4, padding=1, impl="cudnn").init(jax.random.key(0), x)
