"""ConvTranspose2x against the definition of a stride-2 transposed convolution."""

import jax
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


@pytest.mark.parametrize("kernel,padding", [(3, 1), (4, 1), (2, 0), (5, 2)])
def test_conv_transpose_2x_equals_the_definition(kernel, padding):
    m = ConvTranspose2x(5, kernel_size=kernel, padding=padding, use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 3)).astype(np.float32)
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x)
    assert y.shape == (2, 8, 6, 5)
    np.testing.assert_allclose(y, _reference(x, np.asarray(v["params"]["kernel"]), padding), atol=1e-5)


def test_conv_transpose_2x_rejects_sizes_that_do_not_double():
    with pytest.raises(ValueError, match="does not double"):
        ConvTranspose2x(4, kernel_size=3, padding=0).init(jax.random.key(0), np.zeros((1, 2, 2, 1), np.float32))
