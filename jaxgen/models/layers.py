"""Layers jaxgen needs that lower better when written by hand.

`ConvTranspose2x` is a stride-2 transposed convolution in PyTorch's parameterization (`ConvTranspose2d(cin, cout,
K, stride=2, padding=p, output_padding=2 - K + 2p)`, output exactly twice the input), computed in sub-pixel form:
one ordinary convolution that produces the four output phases as channels, then a depth-to-space interleave.
XLA's lowering of strided transposed convolutions (input dilation) was measured 5-9x slower than PyTorch on GPU
and CPU (benchmarks/README.md); these forms do no multiplications by inserted zeros. An even kernel (DCGAN's 4x4)
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
    sel, s = jnp.asarray(sel, w.dtype), sel.shape[0]  # 0/1 entries: exact in any dtype, and bf16 stays bf16
    # [S, S, cin, 2 (row phase), 2 (col phase), cout] -> one conv producing all four phases.
    wc = jnp.einsum("sak,tbl,klio->stiabo", sel, sel, w).reshape(s, s, w.shape[2], 4 * cout)
    pad = ((-dmin, s - 1 + dmin), (-dmin, s - 1 + dmin))
    y = jax.lax.conv_general_dilated(x, wc, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, wd, _ = y.shape
    y = y.reshape(n, h, wd, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * wd, cout)


def _exact_phases_form(x, w, padding):
    """The four output phases as four convolutions with only their own taps (for a 3x3 kernel: 1x1, 1x2, 2x1 and
    2x2, 9 taps in all where the sub-pixel form multiplies 16), then one interleave of the four outputs.

    Phase (a, b) of the output is y[2m + a, 2n + b] = sum of x[m + d, n + e] * w[ky, kx] over the taps of matching
    parity (`_phase_taps`: d = (a + padding - ky) / 2, consecutive integers for a stride of 2), a VALID correlation
    of x padded to cover the offsets with the taps ordered by increasing offset."""
    n, h, wd, _ = x.shape

    def taps(a):  # (kernel taps by increasing offset, lowest offset, highest offset)
        kd = sorted(((a + padding - k) // 2, k) for k in range(w.shape[0]) if (a + padding - k) % 2 == 0)
        return [k for _, k in kd], kd[0][0] if kd else 0, kd[-1][0] if kd else 0

    rows = []
    for a in (0, 1):
        ka, lo_a, hi_a = taps(a)
        cols = []
        for b in (0, 1):
            kb, lo_b, hi_b = taps(b)
            if not ka or not kb:  # a 1x1 kernel reaches no odd phase
                cols.append(jnp.zeros((n, h, wd, w.shape[-1]), jnp.result_type(x, w)))
                continue
            pad = ((0, 0), (max(0, -lo_a), max(0, hi_a)), (max(0, -lo_b), max(0, hi_b)), (0, 0))
            xp = jnp.pad(x, pad)[:, max(0, lo_a):, max(0, lo_b):]
            y = _conv_valid(xp, w[np.asarray(ka)][:, np.asarray(kb)])
            cols.append(y[:, :h, :wd])
        rows.append(jnp.stack(cols, axis=3))  # [N, H, W, 2 (col phase), out]
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * wd, w.shape[-1])  # [N, H, 2 (row phase), W, 2, out]


def _conv_valid(xp, w):
    return jax.lax.conv_general_dilated(xp, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


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
    y = _conv_valid(xp, v)
    hf, wf = h + a - 1, wd + a - 1
    y = y.reshape(n, hf, wf, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * hf, 2 * wf, cout)
    return y[:, padding : padding + 2 * h, padding : padding + 2 * wd]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_transpose_2x(x: jax.Array, w: jax.Array, padding: int) -> jax.Array:
    """The stride-2 transposed convolution of ConvTranspose2x's 'phase' impl: the sub-pixel (odd K) or exact
    (even K) form forward (an odd K's exact phases on XLA:CPU outside differentiation: `_forward_form`). Its input
    gradient is the strided convolution of the output gradient (the adjoint, no zero taps) and its weight gradient
    XLA's for that strided convolution, both in place of the autodiff of the form, whose input gradient multiplies
    the form's zero taps too (16 for 9 at K = 3) and whose weight gradient transposes the form's phase-layout
    gradient. XLA:CPU, batch 128 (jax 0.10.2): conv-VAE gradient step
    2,090 -> 2,440 img/s; DCGAN-64 G fwd+bwd 439 -> 422 ms. Other backends keep the form's autodiff, which is
    what the H200 measurements used."""
    return _forward_form(x, w, padding)


def _phase_form(x, w, padding):
    return _even_kernel_form(x, w, padding) if w.shape[0] % 2 == 0 else _sub_pixel_form(x, w, padding)


def _forward_form(x, w, padding):
    """The forward pass outside differentiation (evaluation, sampling): on XLA:CPU an odd kernel's four phases as
    exact convolutions (`_exact_phases_form`), elsewhere `_phase_form`, as measured on GPUs. XLA:CPU, jax 0.10.2,
    AVX2: the conv VAE's 14 -> 28 layer (64 -> 32) alone 7.5 vs 10.8-11.9 ms at batch 128; the quickstart's
    --mode=eval with 200 importance samples 10-12% faster. Under differentiation (`_conv_transpose_2x_fwd`) the
    sub-pixel form stays: with the exact phases the training step gained nothing (its bare gradient step ~4%
    slower; benchmarks/README.md). The two forms agree up to float rounding, so a loss computed under
    differentiation and the same loss evaluated outside it may differ in the last bits."""
    if jax.default_backend() == "cpu" and w.shape[0] % 2 == 1:
        return _exact_phases_form(x, w, padding)
    return _phase_form(x, w, padding)


def _conv_transpose_2x_fwd(x, w, padding):
    return _phase_form(x, w, padding), (x, w)


def _conv_transpose_2x_bwd(padding, residuals, g):
    x, w = residuals
    if jax.default_backend() != "cpu":  # GPUs were measured with the form's autodiff (benchmarks/README.md)
        return jax.vjp(lambda a, b: _phase_form(a, b, padding), x, w)[1](g)
    dx = _strided_conv(g, w.transpose(0, 1, 3, 2), padding).astype(x.dtype)
    k, _, cin, cout = w.shape
    (dwt,) = jax.linear_transpose(lambda v: _strided_conv(g, v, padding), jax.ShapeDtypeStruct((k, k, cout, cin),
                                                                                                  w.dtype))(x)
    return dx, dwt.transpose(0, 1, 3, 2)


conv_transpose_2x.defvjp(_conv_transpose_2x_fwd, _conv_transpose_2x_bwd)


@jax.custom_vjp
def bias_add(y: jax.Array, b: jax.Array) -> jax.Array:
    """y + b over the last axis; b's gradient is a `channel_sum` (XLA:CPU's own column sum over a [N, H, W, C]
    cotangent is a slow reduce-window: 1.3-2.1 ms of the conv VAE's 56 ms step for each decoder bias)."""
    return y + b.astype(y.dtype)


def _bias_add_fwd(y, b):
    return y + b.astype(y.dtype), b


def _bias_add_bwd(b, g):
    return g, channel_sum(g.reshape(-1, g.shape[-1]).astype(jnp.float32)).astype(b.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)


def add_bias(y: jax.Array, b: jax.Array, phase: bool) -> jax.Array:
    """y + b over the last axis: `bias_add` (its written-out gradient) for the 'phase' impls; autodiff's own add for
    'xla', whose layers then have no hand-written (custom_vjp) gradient left, so forward mode (jax.jvp) goes through.
    The add is in float32 (cast back to y's dtype), so that b's gradient, a sum over every position of the batch, is
    summed in float32: XLA:CPU sums a bfloat16 cotangent in bfloat16, rounding every partial sum, and a sum of 65k
    terms stalls (bias gradients 26-98% off at 32x32, batch 64). Bitwise the same add for float32 y."""
    if phase:
        return bias_add(y, b)
    return (y.astype(jnp.float32) + b.astype(jnp.float32)).astype(y.dtype)


IMPLS = ("auto", "phase", "xla")
# Backend -> the implementation 'auto' picks: the phase forms beat XLA's lowering on XLA:CPU and on an H200, in
# float32 and bfloat16 (benchmarks/README.md, jax 0.10.2); a backend measured otherwise gets its entry here.
AUTO_IMPL = {"cpu": "phase", "gpu": "phase"}
DEFAULT_IMPL = "phase"


def pick_impl(what: str, impl: str, choices: tuple[str, ...], auto: dict, default: str) -> str:
    """`impl`, or for 'auto' the choice `auto` names for jax.default_backend() (`default` where it names none); an
    unknown `impl` is refused, listing `choices`."""
    if impl not in choices:
        raise ValueError(f"unknown {what} {impl!r}; choices: {', '.join(choices)}")
    return auto.get(jax.default_backend(), default) if impl == "auto" else impl


def resolve_impl(impl: str) -> str:
    """'phase' or 'xla' for `impl` ('auto' picks by jax.default_backend())."""
    return pick_impl("conv impl", impl, IMPLS, AUTO_IMPL, DEFAULT_IMPL)


def _strided_conv(x, w, padding):
    return jax.lax.conv_general_dilated(x, w, (2, 2), ((padding, padding), (padding, padding)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _xla_transpose_form(x, w, padding):
    """PyTorch's ConvTranspose2d is the adjoint of the strided Conv2d with the same weight, in and out swapped:
    XLA's own lowering of that adjoint (input dilation on CPU; cuDNN's backward-data conv on GPU).

    On CPUs that input-dilated convolution is written out, its kernel flipped in [K, K, in, out]: the transpose of
    the strided conv gave XLA:CPU (jax 0.10.2) a kernel in [K, K, out, in] order wherever its layout was not
    changed back, which XLA:CPU computes with a generic loop instead of Eigen's convolution: the conv VAE's
    evaluation of 16 images with this impl took 7.7 s there, 0.04 s written out (the same numbers to float
    rounding; the gradient costs what it did)."""
    if jax.default_backend() == "cpu":
        k = w.shape[0]
        lo = k - 1 - padding
        hi = lo + 2 - k + 2 * padding
        return jax.lax.conv_general_dilated(x, w[::-1, ::-1], (1, 1), ((lo, hi), (lo, hi)), lhs_dilation=(2, 2),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
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
        else:
            y = conv_transpose_2x(x.astype(dtype), w.astype(dtype), p)
        if self.use_bias:
            y = add_bias(y, self.param("bias", nn.initializers.zeros, (self.features,)), impl == "phase")
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
        phase = resolve_impl(self.impl) == "phase"
        y = (conv_down2x if phase else _strided_conv)(x.astype(dtype), w.astype(dtype), p)
        if self.use_bias:
            y = add_bias(y, self.param("bias", nn.initializers.zeros, (self.features,)), phase)
        return y


def _conv_same(x, w):
    p = (w.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _narrow(w) -> bool:
    """Whether conv_same computes in tap form here: on XLA:CPU, for one or two output channels and at least K*K*out
    input channels (the conv VAE's 32 -> 1 output conv). fwd+bwd at batch 128 (jax 0.10.2, AVX2), XLA's forms ->
    tap form: 16 -> 1 4.7 -> 2.2 ms, 32 -> 1 6.1-6.7 -> 4.0-4.1, 64 -> 1 11.7 -> 9.1, 32 -> 2 6.7 -> 5.5; but
    64 -> 3 31-32 -> 40-42 and 128 -> 3 55 -> 76 (at 32x32), where XLA's convolution is no longer slow."""
    k, _, cin, cout = w.shape
    return jax.default_backend() == "cpu" and cout <= 2 and k * k * cout <= cin


def _tap_form(x, w):
    """The 'SAME' conv as one matrix product and a shifted sum: z = x @ w as [in, K*K*out] gives every tap's
    contribution at every pixel, and y[i, j] is the sum over taps (ky, kx) of z[i + ky - p, j + kx - p, tap]."""
    k, _, cin, cout = w.shape
    n, h, wd, _ = x.shape
    p = (k - 1) // 2
    z = jnp.dot(x.reshape(-1, cin), w.transpose(2, 0, 1, 3).reshape(cin, k * k * cout),
                preferred_element_type=jnp.float32)
    zp = jnp.pad(z.reshape(n, h, wd, k * k, cout), ((0, 0), (p, p), (p, p), (0, 0), (0, 0)))
    return sum(zp[:, ky:ky + h, kx:kx + wd, k * ky + kx] for ky in range(k) for kx in range(k)).astype(x.dtype)


@jax.custom_vjp
def conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """A stride-1 convolution with 'SAME' zero padding (odd K), NHWC x [K, K, in, out]: XLA's forward and input
    gradient, except on XLA:CPU:
    - when out < in, the weight gradient is one matrix product with only the (smaller) output gradient transposed:
      tap (ky, kx) pairs x[i, j] with g[i - ky + p, j - kx + p], so the K*K shifted copies of the transposed
      gradient [K*K*out, N*H*W] times x's rows [N*H*W, in] give every tap. XLA:CPU transposes both operands of a
      weight-gradient convolution, fused with whatever produced them (a slow loop: 4.6-6.9 ms of the conv VAE's
      ~56 ms step for its output conv's 13 MB input);
    - for one or two outputs from at least K*K*out inputs (`_narrow`: the conv VAE's 32 -> 1), the forward pass
      is `_tap_form` (one matrix product, then a shifted sum) and the input gradient the product of the same
      shifted copies with the kernel. XLA:CPU's convolution with one output channel ran at 12-14 GFLOP/s;
      fwd+bwd of that layer alone, batch 128 (jax 0.10.2, AVX2): 6.1-7.7 -> 4.0-5.3 ms; the conv VAE's whole
      step +7-10% (benchmarks/README.md)."""
    return (_tap_form if _narrow(w) else _conv_same)(x, w)


def _conv_same_fwd(x, w):
    return (_tap_form if _narrow(w) else _conv_same)(x, w), (x, w)


def _conv_same_bwd(residuals, g):
    x, w = residuals
    k, _, cin, cout = w.shape
    if jax.default_backend() != "cpu" or cout >= cin:
        return jax.vjp(_conv_same, x, w)[1](g)
    n, h, wd, _ = x.shape
    p = (k - 1) // 2
    gt = jnp.pad(g.transpose(3, 0, 1, 2), ((0, 0), (0, 0), (p, p), (p, p)))  # [out, N, H + 2p, W + 2p]
    shifted = jnp.stack([gt[:, :, k - 1 - ky:k - 1 - ky + h, k - 1 - kx:k - 1 - kx + wd]
                         for ky in range(k) for kx in range(k)])  # [K*K, out, N, H, W]
    m = n * h * wd
    shifted = shifted.reshape(k * k * cout, m)
    dw = jnp.dot(shifted, x.reshape(m, cin).astype(shifted.dtype), preferred_element_type=jnp.float32)
    if _narrow(w):  # dx[m] = sum over taps and out of shifted[(tap, out), m] * w[tap, in, out]: the same copies
        dx = jax.lax.dot_general(shifted, w.transpose(0, 1, 3, 2).reshape(k * k * cout, cin).astype(shifted.dtype),
                                 (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
        dx = dx.reshape(x.shape).astype(x.dtype)
    else:
        (dx,) = jax.vjp(lambda a: _conv_same(a, w), x)[1](g)
    return dx, dw.reshape(k, k, cout, cin).transpose(0, 1, 3, 2).astype(w.dtype)


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


class Conv(nn.Module):
    """A stride-1 K x K convolution with 'SAME' zero padding (odd K), NHWC, with nn.Conv's variables ('kernel'
    [K, K, in, out], lecun-normal; 'bias', zeros). impl 'phase': `conv_same` and `bias_add` (their gradients
    written for XLA:CPU); 'xla': XLA's convolution and autodiff throughout."""

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: jnp.dtype | None = None
    impl: str = "auto"
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"Conv: kernel_size {k} must be odd for 'SAME' padding")
        w = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        dtype = self.dtype or x.dtype
        phase = resolve_impl(self.impl) == "phase"
        y = (conv_same if phase else _conv_same)(x.astype(dtype), w.astype(dtype))
        if self.use_bias:
            y = add_bias(y, self.param("bias", self.bias_init, (self.features,)), phase)
        return y


def channel_sum(x2: jax.Array) -> jax.Array:
    """Column sums of a [M, C] array. On XLA:CPU the rows are first regrouped to ~1024 wide
    ([M / k, k * C], a free reshape), whose column reduction XLA:CPU runs ~6x faster than [M, C]'s for C = 64
    (jax 0.10.2, 33 MB)."""
    m, c = x2.shape
    k = max(1, 1024 // c)
    if jax.default_backend() == "cpu" and k > 1 and m % k == 0:
        return x2.reshape(m // k, k * c).sum(0).reshape(k, c).sum(0)
    return x2.sum(0)


ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "gelu": nn.gelu, "silu": nn.silu, "elu": nn.elu}


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def leaky_relu(x: jax.Array, negative_slope: float) -> jax.Array:
    """jax.nn.leaky_relu's values, with its derivative as one product: the tangent times the slope (1 or
    `negative_slope`, from x's sign); gradients equal jax's bit for bit, up to the sign of a zero. Autodiff of the
    `where` gives the transpose two selects and a sum, which XLA:CPU ran 3-4x slower fused into D's BatchNorm
    backward (~300 of the 2,600 ms DCGAN-64 step at batch 128; the step +11%, benchmarks/README.md)."""
    return jnp.where(x >= 0, x, negative_slope * x)


@leaky_relu.defjvp
def _leaky_relu_jvp(negative_slope, primals, tangents):
    (x,), (t,) = primals, tangents
    return leaky_relu(x, negative_slope), t * jnp.where(x >= 0, 1, negative_slope).astype(t.dtype)


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
