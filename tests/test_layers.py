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


def _init_apply(m, x, key=0):
    """m's variables and output on x, computed as one jitted program: run outside jit, each of init's and apply's ops
    is an XLA program of its own (~25 ms each to compile on CI's 2 cores; some tests here would build 100-200)."""

    def f(x):
        v = m.init(jax.random.key(key), x)
        return v, m.apply(v, x)

    return jax.jit(f)(x)


@pytest.mark.parametrize("impl", ["phase", "xla"])
@pytest.mark.parametrize("kernel,padding", [(3, 1), (4, 1), (2, 0), (5, 2), (1, 0)])
def test_conv_transpose_2x_equals_the_definition(kernel, padding, impl):
    m = ConvTranspose2x(5, kernel_size=kernel, padding=padding, use_bias=False, impl=impl)
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 3)).astype(np.float32)
    v, y = _init_apply(m, x)
    assert y.shape == (2, 8, 6, 5)
    np.testing.assert_allclose(y, _reference(x, np.asarray(v["params"]["kernel"]), padding), atol=1e-5)


@pytest.mark.parametrize("impl", ["phase", "xla"])
@pytest.mark.parametrize("kernel,padding", [(3, 1), (4, 1), (5, 2)])
def test_the_strided_layers_compute_in_bfloat16(kernel, padding, impl):
    """bf16 compute (fp32 params) stays bf16 through both layers and their gradients, close to the definition."""
    from jaxgen.models.layers import ConvDown2x

    x = np.random.default_rng(1).normal(size=(2, 4, 3, 3)).astype(np.float32)
    up = ConvTranspose2x(5, kernel_size=kernel, padding=padding, use_bias=False, impl=impl, dtype=jnp.bfloat16)
    down = ConvDown2x(4, impl=impl, dtype=jnp.bfloat16)

    @jax.jit  # one program, not one per op
    def run(x):
        v = up.init(jax.random.key(0), x)
        y = up.apply(v, x)
        vd = down.init(jax.random.key(1), y)
        loss = lambda v, vd: jnp.sum(down.apply(vd, up.apply(v, x)).astype(jnp.float32) ** 2)
        return v, y, down.apply(vd, y), jax.grad(loss, (0, 1))(v, vd)

    v, y, y_down, grads = run(x)
    assert y.dtype == jnp.bfloat16
    ref = _reference(x, np.asarray(v["params"]["kernel"]), padding)
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, atol=0.05 * np.abs(ref).max())
    assert y_down.dtype == jnp.bfloat16
    assert all(g.dtype == jnp.float32 and np.isfinite(g).all() for g in jax.tree.leaves(grads))


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
    # each side's value and gradients as one program: outside jit each op would be one
    run = jax.jit(lambda f, x, w: (f(x, w, padding), *jax.grad(loss(f), (0, 1))(x, w)), static_argnums=0)
    (y, *grads), (y_ref, *grads_ref) = run(conv_down2x, x, w), run(_conv_down, x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    for a, b in zip(grads, grads_ref):
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
        v = jax.jit(cls(4, kernel_size=4, padding=1, impl="phase").init)(jax.random.key(0), x)
        outs = []
        for impl in ("phase", "xla", "auto"):
            m = cls(4, kernel_size=4, padding=1, impl=impl)
            f = lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x)))
            outs.append(jax.jit(lambda v, x, f=f: (f(v, x), *jax.grad(f, (0, 1))(v, x)))(v, x))  # one program
        for other in outs[1:]:
            for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(other)):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="choices: auto, phase, xla"):  # raised while tracing: nothing to compile
        jax.eval_shape(ConvTranspose2x(4, kernel_size=4, padding=1, impl="cudnn").init, jax.random.key(0), x)


def _bn_pair(impl, x, g, axis_name=None):
    """Loss sum(sin(BN(x)) * g) through a train-mode BatchNorm of `impl`: (loss, grads wrt params and x,
    updated batch_stats, and without axis_name the eval-mode output with those stats)."""
    import flax.linen as nn

    from jaxgen.models.batch_norm import BatchNorm

    cls = BatchNorm if impl == "fused" else nn.BatchNorm
    m = cls(use_running_average=False, momentum=0.9, epsilon=1e-5, axis_name=axis_name,
            scale_init=lambda k, s, d=jnp.float32: 1.0 + 0.1 * jax.random.normal(k, s, d))
    v = m.init(jax.random.key(0), x)
    v = {"params": {**v["params"], "bias": jnp.linspace(-0.5, 0.5, x.shape[-1])}, "batch_stats": v["batch_stats"]}

    def loss(p, x):
        y, upd = m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y) * g), upd

    (value, upd), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(v["params"], x)
    if axis_name is None:  # eval mode: normalised by the running averages just updated
        y_eval = m.clone(use_running_average=True).apply({"params": v["params"], **upd}, x)
        return value, grads, upd, y_eval
    return value, grads, upd


def test_fused_batch_norm_equals_flax_in_value_gradients_and_running_stats():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 6, 6, 64)) * 2 + 1).astype(np.float32)  # M=288: the regrouped column sums
    g = rng.standard_normal(x.shape).astype(np.float32)
    both = jax.jit(lambda xs, gs: (_bn_pair("flax", xs, gs), _bn_pair("fused", xs, gs)))  # one program per shape
    for xs, gs in ((x, g), (x[:, :5, :5, :7], g[:, :5, :5, :7])):  # and C=7, M=200: plain column sums
        ref, ours = both(xs, gs)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(ours)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_fused_batch_norm_synchronised_over_devices_equals_flax():
    from jax.sharding import PartitionSpec as P

    from jaxgen import parallel

    mesh = parallel.make_mesh()
    n = mesh.size
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2 * n, 4, 4, 8)), jnp.float32)
    g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    outs = []
    for impl in ("flax", "fused"):
        def body(x, g, impl=impl):
            value, grads, upd = _bn_pair(impl, x, g, axis_name=parallel.AXIS)
            return jax.lax.psum(value, parallel.AXIS), jax.lax.psum(grads[0], parallel.AXIS), grads[1], upd

        f = jax.shard_map(body, mesh=mesh, in_specs=(P(parallel.AXIS), P(parallel.AXIS)),
                          out_specs=(P(), P(), P(parallel.AXIS), P()), check_vma=False)
        outs.append(jax.jit(f)(x, g))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    # and the synchronised statistics are those of the whole batch, as one device computes them
    np.testing.assert_allclose(outs[1][0], jax.jit(lambda x, g: _bn_pair("fused", x, g)[0])(x, g), rtol=1e-5)


def test_norm_impls_are_checked_by_name():
    from jaxgen.models.batch_norm import resolve_norm_impl

    assert resolve_norm_impl("flax") == "flax"
    assert resolve_norm_impl("auto") in ("fused", "flax")
    with pytest.raises(ValueError, match="choices: auto, fused, flax"):
        resolve_norm_impl("cudnn")


def test_norm_impls_give_the_same_variables_so_checkpoints_carry_over():
    from jaxgen import config as config_lib
    from jaxgen.models import gan

    c = config_lib.gan_config()
    c.model.g_width = c.model.d_width = 4
    z, x = np.zeros((2, 100), np.float32), np.zeros((2, 28, 28, 1), np.float32)
    variables = []
    for impl in ("fused", "flax"):
        c.model.norm_impl = impl
        g, d = gan.build(c.model, (28, 28, 1))
        variables.append(jax.jit(lambda z, x, g=g, d=d: (g.init(jax.random.key(0), z), d.init(jax.random.key(1), x)))(
            z, x))  # one program for both inits, not one per op
    assert jax.tree.structure(variables[0]) == jax.tree.structure(variables[1])
    for a, b in zip(jax.tree.leaves(variables[0]), jax.tree.leaves(variables[1])):
        np.testing.assert_array_equal(a, b)
    c.model.norm_impl = "cudnn"
    with pytest.raises(ValueError, match="choices: auto, fused, flax"):
        gan.build(c.model, (32, 32, 3))


@pytest.mark.parametrize("cin,cout", [(3, 4), (5, 2)])
@pytest.mark.parametrize("kernel,padding", [(3, 1), (4, 1), (5, 2)])
def test_conv_transpose_2x_has_the_gradients_of_its_form(kernel, padding, cin, cout):
    """The written-out VJP (strided conv for the input, XLA's strided-conv weight gradient) equals autodiff."""
    from jaxgen.models.layers import _phase_form, conv_transpose_2x

    rng = np.random.default_rng(kernel)
    x = jnp.asarray(rng.standard_normal((2, 5, 4, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)), jnp.float32)
    loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w, padding)))
    both = jax.jit(lambda x, w: (jax.grad(loss(conv_transpose_2x), (0, 1))(x, w),
                                 jax.grad(loss(_phase_form), (0, 1))(x, w)))  # one program, not one per op
    for a, b in zip(*both(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["phase", "xla"])
def test_conv_equals_flax_conv_in_variables_value_and_gradients(impl):
    """layers.Conv (the conv VAE's output layer) against nn.Conv with SAME padding: same variables (so checkpoints
    carry over), outputs and gradients, through conv_same's matmul weight gradient (out < in), its tap form
    (`_narrow`: forward and input gradient as matrix products) and bias_add."""
    import flax.linen as nn

    from jaxgen.models import layers
    from jaxgen.models.layers import Conv

    rng = np.random.default_rng(5)
    narrow = 0
    for cin, features, k in ((4, 1, 3), (4, 2, 5), (4, 6, 3), (9, 1, 3), (20, 2, 3)):
        x = jnp.asarray(rng.standard_normal((3, 6, 5, cin)), jnp.float32)
        tap_form = layers._narrow(np.zeros((k, k, cin, features)))
        narrow += impl == "phase" and tap_form
        ours, ref = Conv(features, k, impl=impl), nn.Conv(features, (k, k), padding="SAME")
        low = Conv(features, k, impl=impl, dtype=jnp.bfloat16)  # the tap form keeps the compute dtype
        loss = lambda m: lambda vs, xs: jnp.sum(jnp.sin(m.apply(vs, xs)))

        @jax.jit  # every computation of this case as one program: outside jit each op would be one
        def run(x, ours=ours, ref=ref, low=low, loss=loss, tap_form=tap_form):
            inits = ours.init(jax.random.key(0), x), ref.init(jax.random.key(0), x)
            v = jax.tree.map(lambda u: u + 0.1, inits[0])  # a non-zero bias
            out = (ours.apply(v, x), ref.apply(v, x), jax.grad(loss(ours), (0, 1))(v, x),
                   jax.grad(loss(ref), (0, 1))(v, x))
            if tap_form:
                out += (low.apply(v, x), jax.grad(lambda vs: jnp.sum(low.apply(vs, x).astype(jnp.float32) ** 2))(v))
            return inits, out

        (v, v_ref), (y, y_ref, grads, grads_ref, *low_out) = run(x)
        jax.tree.map(np.testing.assert_array_equal, v, v_ref)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        if not tap_form:
            continue
        y, grads = low_out
        assert y.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, rtol=0.05, atol=0.05)
        assert all(g.dtype == jnp.float32 and np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert narrow == (2 if impl == "phase" else 0)  # the tap form ran (on this CPU backend) where it applies


def test_fused_batch_norm_supports_gradients_of_gradients():
    """R1 and WGAN-GP differentiate D's input gradient again: through the fused BatchNorm it equals flax's."""
    from jaxgen import config as config_lib
    from jaxgen.models import gan

    c = config_lib.gan_config()
    c.model.d_width = 4
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 28, 28, 1)), jnp.float32)
    outs = []
    for impl in ("fused", "flax"):
        c.model.norm_impl = impl
        _, d = gan.build(c.model, (28, 28, 1))

        @jax.jit  # init and R1's value and gradient as one program: outside jit each op would be one
        def run(x, d=d):
            v = d.init(jax.random.key(1), x)

            def r1(p):
                f = lambda xs: jnp.sum(d.apply({"params": p, "batch_stats": v["batch_stats"]}, xs,
                                               mutable=["batch_stats"])[0])
                g = jax.grad(f)(x)
                return jnp.sum(g * g)

            return jax.value_and_grad(r1)(v["params"])

        outs.append(run(x))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1])):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_leaky_relu_equals_jax_in_value_gradient_and_second_derivative(dtype):
    """layers.leaky_relu (D's activation, derivative written as one product) against jax.nn.leaky_relu: values,
    input gradients (zero included: slope 1 there, as autodiff of jax's where gives) and the gradients of a
    gradient that R1 and WGAN-GP take through D."""
    from jaxgen.models import layers

    x = jnp.asarray(np.r_[np.random.default_rng(0).standard_normal(61), 0.0, -0.0, 1e-30, -1e-30], dtype)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(65), dtype)
    ours, theirs = (lambda u: layers.leaky_relu(u, 0.2)), (lambda u: jax.nn.leaky_relu(u, 0.2))
    for fn in (lambda a: a(x),
               lambda a: jax.grad(lambda u: jnp.sum(w * a(u)).astype(jnp.float32))(x),
               lambda a: jax.grad(lambda s: jnp.sum(jax.grad(lambda u: jnp.sum(s * w * a(s * u)))(x) ** 2))(
                   jnp.asarray(1.5, dtype))):
        a, b = (jax.jit(fn, static_argnums=0)(f) for f in (ours, theirs))  # a program each, not one per op
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_forward_mode_autodiff_goes_through_the_models_with_the_xla_and_flax_impls():
    """The README's promise for a regularizer that needs jax.jvp / jacfwd: with conv_impl='xla' and norm_impl='flax'
    no hand-written (custom_vjp) gradient is left in G, D or the conv VAE, biases included."""
    from jaxgen import config as config_lib
    from jaxgen import models
    from jaxgen.models import gan as gan_models

    c = config_lib.gan_config()
    c.model.conv_impl, c.model.norm_impl, c.model.g_width, c.model.d_width = "xla", "flax", 8, 8
    # jvp through a custom_vjp function fails when the program is lowered (jax 0.10 lets tracing, so jax.eval_shape,
    # through), so lowering the jvp, without compiling or running it, checks the promise: run outside jit, init,
    # apply and jvp built ~240 one-op programs
    G, D = gan_models.build(c.model, (32, 32, 3))
    z, x = jax.ShapeDtypeStruct((2, G.latent_dim), jnp.float32), jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    for net, inp in ((G, z), (D, x)):
        def f(a, net=net):
            v = net.init(jax.random.key(0), a)
            return jax.jvp(lambda a: net.apply(v, a, mutable=["batch_stats"])[0], (a,), (jnp.ones_like(a),))

        jax.jit(f).lower(inp)
    v = config_lib.vae_config()
    v.model.conv_impl = "xla"
    vae = models.build(v.model, (28, 28, 1))
    latent = jax.ShapeDtypeStruct((2, v.model.latent_dim), jnp.float32)

    def decode_jvp(x, z):
        params = vae.init(jax.random.key(0), x, z)
        return jax.jvp(lambda z: vae.apply(params, z, method="decode"), (z,), (jnp.ones_like(z),))

    jax.jit(decode_jvp).lower(jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32), latent)
