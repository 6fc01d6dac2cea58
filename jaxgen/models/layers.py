"""Layers jaxgen needs that lower better when written by hand.

`ConvTranspose2x` is a stride-2 transposed convolution in PyTorch's parameterization (`ConvTranspose2d(cin, cout,
K, stride=2, padding=p, output_padding=2 - K + 2p)`, output exactly twice the input), computed in sub-pixel form:
one ordinary convolution that produces the four output phases as channels, then a depth-to-space interleave.
XLA's lowering of strided transposed convolutions (input dilation) was measured 5-9x slower than PyTorch on GPU
and CPU (../shared/anchors.md); the sub-pixel form does no multiplications by inserted zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import registry


def _phase_taps(kernel: int, padding: int) -> tuple[np.ndarray, int]:
    """Selection tensor sel[s, a, k] = 1 where output phase a reads kernel tap k at input offset s + dmin.

    For stride 2, output o = 2m + a receives x[i] * w[k] whenever o = 2i + k - padding, i.e.
    i = m + (a + padding - k) / 2 for the taps k of matching parity.
    """
    offsets = {}
    for a in (0, 1):
        for k in range(kernel):
            if (a + padding - k) % 2 == 0:
                offsets[(a, k)] = (a + padding - k) // 2
    dmin, dmax = min(offsets.values()), max(offsets.values())
    sel = np.zeros((dmax - dmin + 1, 2, kernel), np.float32)
    for (a, k), d in offsets.items():
        sel[d - dmin, a, k] = 1.0
    return sel, dmin


class ConvTranspose2x(nn.Module):
    """Stride-2 transposed convolution, NHWC in, NHWC out with twice the height and width.

    Attributes:
      features: output channels.
      kernel_size: K (3 or 4 are usual); `padding` must satisfy 1 <= K - 2 * padding <= 2.
      padding: PyTorch's `padding`; `output_padding` is implied (2 - K + 2 * padding).
      use_bias: add a bias per output channel.
    The kernel is [K, K, in, out] with PyTorch's orientation (`torch_weight.permute(2, 3, 0, 1)`).
    """

    features: int
    kernel_size: int = 3
    padding: int = 1
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.kernel_size, self.padding
        if not 1 <= k - 2 * p <= 2:
            raise ValueError(f"ConvTranspose2x: kernel_size {k} with padding {p} does not double the size")
        cin = x.shape[-1]
        w = self.param("kernel", self.kernel_init, (k, k, cin, self.features))
        sel, dmin = _phase_taps(k, p)
        s = sel.shape[0]
        # [S, S, cin, 2 (row phase), 2 (col phase), cout] -> one conv producing all four phases.
        wc = jnp.einsum("sak,tbl,klio->stiabo", sel, sel, w).reshape(s, s, cin, 4 * self.features)
        dtype = self.dtype or x.dtype
        x, wc = x.astype(dtype), wc.astype(dtype)
        pad = ((-dmin, s - 1 + dmin), (-dmin, s - 1 + dmin))
        y = jax.lax.conv_general_dilated(x, wc, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        n, h, wd, _ = y.shape
        y = y.reshape(n, h, wd, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
        y = y.reshape(n, 2 * h, 2 * wd, self.features)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(dtype)
        return y


ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "gelu": nn.gelu, "silu": nn.silu, "elu": nn.elu}


def activation(name: str):
    """The activation function named `name` (a key of ACTIVATIONS)."""
    return registry.resolve("activation", name, ACTIVATIONS)


def check_divisible(image_shape: Sequence[int], levels: int, model: str) -> None:
    h, w = image_shape[:2]
    f = 2**levels
    if h % f or w % f:
        raise ValueError(
            f"{model}: image size {h}x{w} must be divisible by {f} ({levels} stride-2 levels); "
            f"supported sizes are multiples of {f} such as {', '.join(str(f * i) for i in (4, 7, 8, 16))}, "
            "or change model.channels"
        )
