"""Layers jaxgen needs that lower better when written by hand.

`ConvTranspose2x` is a stride-2 transposed convolution in PyTorch's parameterization (`ConvTranspose2d(cin, cout,
K, stride=2, padding=p, output_padding=2 - K + 2p)`, output exactly twice the input), computed in sub-pixel form:
one ordinary convolution that produces the four output phases as channels, then a depth-to-space interleave.
XLA's lowering of strided transposed convolutions (input dilation) was measured 5-9x slower than PyTorch on GPU
and CPU (../shared/anchors.md); these forms do no multiplications by inserted zeros. An even kernel (DCGAN's 4x4)
uses an exact 2x2 form, an odd one (the VAE's 3x3) the sub-pixel form.

Each layer takes `impl`: 'phase' (the forms here), 'xla' (XLA's own lowering: the transpose of the strided
convolution, which GPUs run as cuDNN's backward-data convolution) or 'auto', which picks per backend from
`AUTO_IMPL` (set from the measurements in benchmarks/README.md).
"""

from __future__ import annotations

import functools
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


def _sub_pixel_form(x, w, padding):
    """The four output phases as channels of one stride-1 conv whose S x S kernel holds each phase's taps (zeros
    elsewhere: 16 taps for a 3x3 kernel), then a depth-to-space interleave."""
    k, cout = w.shape[0], w.shape[-1]
    sel, dmin = _phase_taps(k, padding)
    s = sel.shape[0]
    # [S, S, cin, 2 (row phase), 2 (col phase), cout] -> one conv producing all four phases.
    wc = jnp.einsum("sak,tbl,klio->stiabo", sel, sel, w).reshape(s, s, w.shape[2], 4 * cout)
    pad = ((-dmin, s - 1 + dmin), (-dmin, s - 1 + dmin))
    y = jax.lax.conv_general_dilated(x, wc, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, wd, _ = y.shape
    y = y.reshape(n, h, wd, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * wd, cout)


def _even_kernel_form(x, w, padding):
    """An even K = 2A: every output phase uses exactly A x A taps, so one stride-1 A x A conv over x padded by A-1
    gives all four phases with no zero taps (the adjoint of a strided conv written as space-to-depth + conv);
    depth-to-space, then crop `padding` rows and columns at each side.

    Kernel tap k = 2a + phase lands at full-output index q = 2i + k = 2j + phase with j = i + a; out = q - padding.
    On XLA:CPU (jax 0.10.2, DCGAN-64 G layers, batch 128) fwd+bwd took 0.7x the time of the sub-pixel form, whose
    3x3 kernel holds 36 taps for 16 non-zero. The padding is explicit: the same conv with its padding given to
    conv_general_dilated had a backward pass 40-100x slower there.
    """
    k, cin, cout = w.shape[0], w.shape[2], w.shape[3]
    a = k // 2
    n, h, wd, _ = x.shape
    # w[2a + py, 2b + px] -> v[A-1-a, A-1-b, cin, (py, px, cout)]
    v = w.reshape(a, 2, a, 2, cin, cout)[::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5).reshape(a, a, cin, 4 * cout)
    xp = jnp.pad(x, ((0, 0), (a - 1, a - 1), (a - 1, a - 1), (0, 0)))
    y = jax.lax.conv_general_dilated(xp, v, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    hf, wf = h + a - 1, wd + a - 1
    y = y.reshape(n, hf, wf, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * hf, 2 * wf, cout)
    return y[:, padding : padding + 2 * h, padding : padding + 2 * wd]


IMPLS = ("auto", "phase", "xla")
# Backend -> the implementation 'auto' picks. CPU: the phase forms (benchmarks/README.md, XLA:CPU, jax 0.10.2).
AUTO_IMPL = {"cpu": "phase"}
DEFAULT_IMPL = "phase"


def resolve_impl(impl: str) -> str:
    """'phase' or 'xla' for `impl` ('auto' picks by jax.default_backend())."""
    if impl not in IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; choices: {', '.join(IMPLS)}")
    if impl == "auto":
        return AUTO_IMPL.get(jax.default_backend(), DEFAULT_IMPL)
    return impl


def _strided_conv(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (2, 2), ((padding, padding), (padding, padding)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _xla_transpose_form(x, w, padding):
    """PyTorch's ConvTranspose2d is the adjoint of the strided Conv2d with the same weight, in and out swapped:
    XLA's own lowering of that adjoint (input dilation on CPU; cuDNN's backward-data conv on GPU)."""
    n, h, wd, _ = x.shape
    out = jax.ShapeDtypeStruct((n, 2 * h, 2 * wd, w.shape[-1]), x.dtype)
    (y,) = jax.linear_transpose(lambda z: _strided_conv(z, w.transpose(0, 1, 3, 2), padding), out)(x)
    return y


class ConvTranspose2x(nn.Module):
    """Stride-2 transposed convolution, NHWC in, NHWC out with twice the height and width.

    Attributes:
      features: output channels.
      kernel_size: K (3 or 4 are usual); `padding` must satisfy 1 <= K - 2 * padding <= 2.
      padding: PyTorch's `padding`; `output_padding` is implied (2 - K + 2 * padding).
      use_bias: add a bias per output channel.
      impl: 'auto', 'phase' or 'xla' (module docstring).
    The kernel is [K, K, in, out] with PyTorch's orientation (`torch_weight.permute(2, 3, 0, 1)`).
    """

    features: int
    kernel_size: int = 3
    padding: int = 1
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: jnp.dtype | None = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.kernel_size, self.padding
        impl = resolve_impl(self.impl)
        if not 1 <= k - 2 * p <= 2:
            raise ValueError(f"ConvTranspose2x: kernel_size {k} with padding {p} does not double the size")
        cin = x.shape[-1]
        w = self.param("kernel", self.kernel_init, (k, k, cin, self.features))
        dtype = self.dtype or x.dtype
        if impl == "xla":
            y = _xla_transpose_form(x.astype(dtype), w.astype(dtype), p)
        elif k % 2 == 0:
            y = _even_kernel_form(x.astype(dtype), w.astype(dtype), p)
        else:
            y = _sub_pixel_form(x.astype(dtype), w.astype(dtype), p)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(dtype)
        return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_down2x(x: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    """A stride-2 convolution, NHWC x [K, K, in, out] -> NHWC at half the size, for even K with K - 2p = 2 and
    even H, W (DCGAN's discriminator: K=4, p=1).

    The forward pass is XLA's convolution. Its input gradient is a stride-2 transposed convolution, which
    XLA:CPU lowers by input dilation, 2-5x slower than the forward pass (jax 0.10.2, DCGAN-64 D layers); here it
    is the exact even-kernel form of ConvTranspose2x instead (the adjoint of this conv is the transposed conv with
    the same kernel, in and out swapped). The weight gradient is XLA's.
    """
    return _conv_down(x, w, padding)


def _conv_down(x, w, padding):
    return _strided_conv(x, w, padding)


def _conv_down_fwd(x, w, padding):
    return _conv_down(x, w, padding), (x, w)


def _conv_down_bwd(padding, residuals, g):
    x, w = residuals
    dx = _even_kernel_form(g, w.transpose(0, 1, 3, 2), padding).astype(x.dtype)
    (dw,) = jax.linear_transpose(lambda w_: _conv_down(x, w_, padding), w)(g)
    return dx, dw


conv_down2x.defvjp(_conv_down_fwd, _conv_down_bwd)


class ConvDown2x(nn.Module):
    """Stride-2 convolution with a K x K kernel (K even, padding K/2 - 1): NHWC in, NHWC out at half the height
    and width, with the fast input gradient of `conv_down2x` (impl 'phase') or XLA's own (impl 'xla').
    Kernel [K, K, in, out] as nn.Conv's."""

    features: int
    kernel_size: int = 4
    padding: int = 1
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: jnp.dtype | None = None
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, p = self.kernel_size, self.padding
        if k % 2 or k - 2 * p != 2:
            raise ValueError(f"ConvDown2x: kernel_size {k} with padding {p}; needs an even K and padding K/2 - 1")
        if x.shape[1] % 2 or x.shape[2] % 2:
            raise ValueError(f"ConvDown2x: input size {x.shape[1]}x{x.shape[2]} must be even")
        w = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        dtype = self.dtype or x.dtype
        down = conv_down2x if resolve_impl(self.impl) == "phase" else _strided_conv
        y = down(x.astype(dtype), w.astype(dtype), p)
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
