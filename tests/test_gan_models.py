"""GAN models: shapes and modes of every built-in, synchronised BatchNorm, spectral norm, dtypes, and DCGAN-64
against the PyTorch reference (parameter counts and, at a tiny width, outputs)."""

import functools
import importlib.util
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen import parallel
from jaxgen.config import gan_config
from jaxgen.models import gan

# The team's PyTorch reference (not in this repository): ../shared beside the checkout, as CI has it, or the file
# $JAXGEN_TORCH_REFERENCE names, as for benchmarks/harness.py.
REFERENCE = Path(os.environ.get("JAXGEN_TORCH_REFERENCE",
                                Path(__file__).resolve().parents[2] / "shared" / "reference" / "torch_reference.py"))


def _config(name="dcgan", width=8, **kw):
    c = gan_config().model
    c.name, c.g_width, c.d_width, c.latent_dim = name, width, width, 16
    for k, v in kw.items():
        c[k] = v
    return c


def _init(g, d, image_shape, batch=2):
    # XLA:CPU compiles threefry ~5x faster when it need not be partitionable (jax's default since 0.5); these tests
    # only need some random init, and this setting is local to the block. Jitted: one program, not one per op.
    @jax.jit
    def init():
        gv = g.init(jax.random.key(0), jnp.zeros((batch, g.latent_dim)), train=False)
        dv = d.init(jax.random.key(1), jnp.zeros((batch, *image_shape)), train=False)
        return gv, dv

    with jax.threefry_partitionable(False):
        return init()


def _run(module, variables, x, train):
    """Output of a train- or eval-mode call, and the variables after it."""
    if train and "batch_stats" in variables:
        y, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
        return y, {**variables, **upd}
    return module.apply(variables, x, train=train), variables


def _both_modes(g, d, shape, z):
    """Init, then a train-mode call of G and of D on G's samples, then eval-mode calls with the updated variables."""
    gv, dv = _init(g, d, shape)
    x, gv2 = _run(g, gv, z, True)
    logits, dv2 = _run(d, dv, x, True)
    return (gv, dv), (gv2, dv2), [(x, logits), (g.apply(gv2, z, train=False), d.apply(dv2, x, train=False))]


CASES = [
    ("dcgan", 28, 1, {}),
    ("dcgan", 28, 3, {"g_spectral_norm": True, "d_spectral_norm": True, "dtype": "bfloat16"}),
    ("dcgan", 32, 3, {"g_norm": "none", "d_spectral_norm": True}),
    ("dcgan", 32, 1, {"dtype": "bfloat16"}),
    ("dcgan", 64, 3, {"g_spectral_norm": True, "d_norm": "none"}),
    ("dcgan", 64, 1, {"g_norm": "none", "d_norm": "none"}),
    ("resnet", 32, 3, {"d_norm": "none", "d_spectral_norm": True}),
    ("resnet", 32, 1, {"g_norm": "none", "g_spectral_norm": True, "dtype": "bfloat16"}),
    ("resnet", 64, 3, {"d_norm": "none", "d_spectral_norm": True}),
    ("resnet", 64, 1, {"g_norm": "none", "dtype": "bfloat16"}),
]


@pytest.mark.parametrize("name,res,channels,options", CASES)
def test_every_model_builds_with_the_right_shapes_and_dtypes(name, res, channels, options):
    """Traced only (jax.eval_shape): init, train and eval mode of each; what the outputs are is checked below."""
    shape = (res, res, channels)
    g, d = gan.build(_config(name, **options), shape)
    assert g.latent_dim == 16
    z = jax.ShapeDtypeStruct((4, 16), jnp.float32)
    (gv, dv), (gv2, dv2), outputs = jax.eval_shape(lambda z: _both_modes(g, d, shape, z), z)
    for before, after in ((gv, gv2), (dv, dv2)):
        assert set(before) <= {"params", "batch_stats"}
        assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(before))
        assert jax.tree.structure(before) == jax.tree.structure(after)  # train mode creates no variables
    has_stats = ("batch_stats" in gv, "batch_stats" in dv)
    assert has_stats == (options.get("g_norm", "batch") == "batch" or options.get("g_spectral_norm", False),
                         options.get("d_norm", "batch") == "batch" or options.get("d_spectral_norm", False))
    for x, logits in outputs:
        assert x.shape == (4, *shape) and x.dtype == jnp.float32
        assert logits.shape == (4,) and logits.dtype == jnp.float32
    if options.get("dtype") == "bfloat16":  # computes in bfloat16
        for m, v, inp in ((g, gv, z), (d, dv, jax.ShapeDtypeStruct((4, *shape), jnp.float32))):
            assert "bf16" in jax.jit(lambda v, x, m=m: m.apply(v, x, train=False)).lower(v, inp).as_text()


@pytest.mark.parametrize("name,res,channels,options", [CASES[0], CASES[7]])
def test_models_run_in_both_modes(name, res, channels, options):
    shape = (res, res, channels)
    g, d = gan.build(_config(name, **options), shape)
    z = jax.random.normal(jax.random.key(2), (4, 16))
    (gv, dv), (gv2, dv2), outputs = jax.jit(lambda z: _both_modes(g, d, shape, z))(z)
    for x, logits in outputs:
        assert np.all(np.abs(np.asarray(x)) <= 1) and np.all(np.isfinite(x)) and np.all(np.isfinite(logits))
    assert np.asarray(outputs[0][0]).std() > 1e-2  # train mode: BN with batch statistics
    for before, after in ((gv, gv2), (dv, dv2)):  # BN running averages and u vectors move in train mode
        # (not sigma: flax's SpectralNorm stores init kernels divided by a first estimate, so the next is ~1 again)
        moved = jax.tree_util.tree_flatten_with_path(jax.tree.map(lambda a, b: bool(np.any(a != b)),
                                                                  before["batch_stats"], after["batch_stats"]))[0]
        assert all(m for path, m in moved if not path[-1].key.endswith("sigma"))


def test_errors_list_the_choices():
    with pytest.raises(ValueError, match=r"dcgan supports resolutions 28, 32, 64; got 48x48. data.resolution "
                                         r"resizes image_folder and celeb_a images; synthetic images have "
                                         r"data.image_shape"):
        gan.build(_config("dcgan"), (48, 48, 3))
    with pytest.raises(ValueError, match=r"a dataset function of yours, data.name='package.module:function', at the "
                                         r"size it returns\): pick a model that supports it"):
        gan.build(_config("dcgan"), (30, 30, 3))
    with pytest.raises(ValueError, match="resnet supports resolutions 32, 64; got 28x28"):
        gan.build(_config("resnet"), (28, 28, 1))
    with pytest.raises(ValueError, match="unknown GAN model 'stylegan'; choices: dcgan, resnet"):
        gan.build(_config("stylegan"), (32, 32, 3))
    with pytest.raises(ValueError, match="unknown d_norm 'layer'; choices: batch, none"):
        gan.build(_config("resnet", d_norm="layer"), (32, 32, 3))
    with pytest.raises(ValueError, match="unknown dtype 'float16'; choices: float32, bfloat16"):
        gan.build(_config("dcgan", dtype="float16"), (32, 32, 3))


def user_builder(model_config, image_shape, axis_name=None):
    return gan.dcgan(model_config, image_shape, axis_name)


def test_a_user_function_is_called_the_same_way():
    g, d = gan.build(_config(f"{__name__}:user_builder"), (28, 28, 1), axis_name="data")
    assert isinstance(g, gan.DCGANGenerator) and d.axis_name == "data"


def test_batchnorm_is_synchronised_over_the_mesh():
    """Train mode per device under shard_map with axis_name='data' == the whole batch on one device."""
    shape = (28, 28, 1)
    c = _config("dcgan", d_spectral_norm=True)
    g, d = gan.build(c, shape)
    g_sync, d_sync = gan.build(c, shape, axis_name="data")
    gv, dv = _init(g, d, shape)
    mesh = parallel.make_mesh()
    z, x = jax.jit(lambda: (jax.random.normal(jax.random.key(3), (2 * mesh.size, 16)),  # one program, not one per op
                            jnp.tanh(jax.random.normal(jax.random.key(4), (2 * mesh.size, *shape)))))()

    def step(m):
        return lambda v, inp: m.apply(v, inp, train=True, mutable=["batch_stats"])

    for one, synced, v, inp in ((g, g_sync, gv, z), (d, d_sync, dv, x)):
        want, want_stats = jax.jit(step(one))(v, inp)
        sharded = jax.shard_map(step(synced), mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P()))
        got, got_stats = jax.jit(sharded)(v, inp)
        np.testing.assert_allclose(got, want, atol=3e-5, rtol=1e-4)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), got_stats, want_stats)


def _normalized(params):
    """params with every spectrally normalised kernel divided by its exact top singular value."""
    flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    out = {}
    for path, leaf in flat.items():
        names = "/".join(k.key for k in path)
        if names.endswith("kernel"):  # in numpy (float32, as JAX divides): no one-op XLA program per leaf
            leaf = np.asarray(leaf)
            leaf = leaf / np.float32(np.linalg.svd(leaf.reshape(-1, leaf.shape[-1]), compute_uv=False)[0])
        out[path] = leaf
    return jax.tree_util.tree_unflatten(jax.tree.structure(params), [out[p] for p in flat])


def test_spectral_norm_divides_every_kernel_by_its_top_singular_value():
    """After power iteration converges, G with spectral norm (around Dense, ConvTranspose2x and Conv) computes what G
    without it computes on kernels divided by their exact top singular values; D's stored sigmas match the SVD."""
    shape = (28, 28, 1)
    c = _config("dcgan", g_norm="none", d_norm="none", g_spectral_norm=True, d_spectral_norm=True)
    g, d = gan.build(c, shape)
    g_plain, _ = gan.build(_config("dcgan", g_norm="none"), shape)
    gv, dv = _init(g, d, shape)
    z = jax.jit(lambda: jax.random.normal(jax.random.key(5), (2, 16)))()  # one program, not one per op
    x = np.zeros((2, *shape), np.float32)

    @jax.jit
    def iterate(gv, dv):
        def body(_, vs):
            gv, dv = vs
            _, gs = g.apply(gv, z, train=True, mutable=["batch_stats"])
            _, ds = d.apply(dv, x, train=True, mutable=["batch_stats"])
            return {**gv, **gs}, {**dv, **ds}

        return jax.lax.fori_loop(0, 300, body, (gv, dv))

    gv, dv = iterate(gv, dv)
    got, want = jax.jit(lambda gv, p: (g.apply(gv, z, train=False), g_plain.apply({"params": p}, z, train=False)))(
        gv, _normalized(gv["params"]))  # both as one program, not one per op
    np.testing.assert_allclose(got, want, atol=2e-3)
    stats = jax.tree_util.tree_flatten_with_path(dv["batch_stats"])[0]
    sigmas = {p: v for p, v in stats if p[-1].key.endswith("sigma")}
    kernels = {"/".join(k.key for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(dv["params"])[0]
               if p[-1].key == "kernel"}
    assert len(sigmas) == len(kernels) > 0
    for path, sigma in sigmas.items():  # batch_stats/.../SpectralNorm_i/'<layer>/kernel/sigma'
        k = np.asarray(kernels["/".join([k.key for k in path[:-2]] + [path[-1].key.split("/")[0], "kernel"])])
        top = np.linalg.svd(k.reshape(-1, k.shape[-1]), compute_uv=False)[0]
        np.testing.assert_allclose(float(sigma), top, rtol=1e-3)


def _reference():
    torch = pytest.importorskip("torch")
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} is missing")
    spec = importlib.util.spec_from_file_location("torch_reference", REFERENCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return torch, mod


def _count(module, *args):
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, train=False))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes["params"]))


def test_dcgan64_parameter_counts_equal_the_torch_reference():
    torch, ref = _reference()
    g, d = gan.build(_config("dcgan", width=64, latent_dim=100), (64, 64, 3))
    n_torch = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert _count(g, jnp.zeros((1, 100))) == n_torch(ref.G()) == 3_576_704
    assert _count(d, jnp.zeros((1, 64, 64, 3))) == n_torch(ref.D()) == 2_765_568


def test_dcgan64_computes_what_the_torch_reference_computes():
    """Torch weights loaded into G and D (width 8) give the same train-mode outputs: same layers, same layout."""
    torch, ref = _reference()
    torch.manual_seed(0)
    tg, td = ref.G(nz=16, ngf=8), ref.D(ndf=8)
    g, d = gan.build(_config("dcgan", width=8), (64, 64, 3))
    t = lambda w: jnp.asarray(w.detach().numpy())
    bn = lambda m: {"scale": t(m.weight), "bias": t(m.bias)}
    layers = lambda net, kind: [m for m in net if isinstance(m, kind)]
    cts, convs = layers(tg.net, torch.nn.ConvTranspose2d), layers(td.net, torch.nn.Conv2d)
    gp = {"Dense_0": {"kernel": t(cts[0].weight.permute(0, 2, 3, 1).reshape(16, -1))}}  # 1x1 -> 4x4 == a Dense
    gp.update({f"ConvTranspose2x_{i}": {"kernel": t(m.weight.permute(2, 3, 0, 1))} for i, m in enumerate(cts[1:])})
    gp.update({f"BatchNorm_{i}": bn(m) for i, m in enumerate(layers(tg.net, torch.nn.BatchNorm2d))})
    dp = {f"ConvDown2x_{i}": {"kernel": t(m.weight.permute(2, 3, 1, 0))} for i, m in enumerate(convs[:-1])}
    dp.update({f"BatchNorm_{i}": bn(m) for i, m in enumerate(layers(td.net, torch.nn.BatchNorm2d))})
    dp["Dense_0"] = {"kernel": t(convs[-1].weight[0].permute(1, 2, 0).reshape(-1, 1))}
    gv, dv = jax.eval_shape(lambda: _init(g, d, (64, 64, 3)))  # only the structure: every value comes from torch
    gv, dv = ({**v, "batch_stats": jax.tree.map(lambda a: np.ones(a.shape, np.float32), v["batch_stats"])}
              for v in (gv, dv))
    assert jax.tree.structure(gp) == jax.tree.structure(gv["params"])
    assert jax.tree.structure(dp) == jax.tree.structure(dv["params"])
    z = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)

    @jax.jit  # G and D as one program, not one per op
    def run(gv, dv, z):
        x, _ = g.apply(gv, z, train=True, mutable=["batch_stats"])
        return x, d.apply(dv, x, train=True, mutable=["batch_stats"])[0]

    x, logits = run({**gv, "params": gp}, {**dv, "params": dp}, z)
    with torch.no_grad():
        tx = tg(torch.from_numpy(z)[:, :, None, None])
        tl = td(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2))
    np.testing.assert_allclose(x, tx.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(logits, tl.numpy(), atol=1e-4)


def test_one_dcgan_iteration_updates_both_nets_as_the_torch_reference_does():
    """configs/gan_celeba.py's iteration (non-saturating loss, Adam(2e-4, 0.5), BatchNorm; width 8) from the same
    weights, reals and latents as torch_reference.gan_step_fn (pytorch/examples' order: D on reals and on fakes in
    two calls, then G through the updated D): the same losses, gradients (Adam's first moment) and updated
    weights. Adam's first step is about lr * sign(gradient), so a weight whose gradient is ~0 may step either way
    in float32 on either side: a few such entries may differ by up to 2 lr."""
    torch, ref = _reference()
    from configs import gan_celeba
    from jaxgen.data import device as dev
    from jaxgen.objectives import gan as gan_obj
    from jaxgen.training import gan_step, optim
    from jaxgen.training import state as state_lib

    c = gan_celeba.get_config()
    c.unlock()
    c.model.g_width = c.model.d_width = 8
    c.model.latent_dim, c.train.batch_size, c.train.ema_half_life, b, shape = 16, 8, 0.0, 8, (64, 64, 3)
    g, d = gan.build(c.model, shape, axis_name=parallel.AXIS)
    g_tx, g_lr = optim.make(c.g_optim, c.train.steps)
    d_tx, d_lr = optim.make(c.d_optim, c.train.steps)
    # jitted: create_gan runs its inits op by op otherwise
    state = jax.jit(lambda: state_lib.create_gan(g, d, g_tx, d_tx, shape, 0, ema=False))()
    images = np.random.default_rng(0).integers(0, 256, (b, *shape), dtype=np.uint8)  # the batch is all of them
    train = gan_step.compile_train(
        parallel.make_mesh(jax.devices()[:1]), steps_per_dispatch=1, generator=g, discriminator=d, g_tx=g_tx,
        d_tx=d_tx, loss_fn=gan_obj.get_loss(c.loss.name, c.loss), reg_fn=None, reg_weight=0.0, reg_interval=1,
        d_steps=1, batch=b, augment_policy="", ema_half_life=0.0, ema_rampup=0.0, g_lr=g_lr, d_lr=d_lr, g_batch=0,
        random_flip=False)
    init = jax.device_get({k: state[k] for k in ("g", "d")})
    # The step's latents, drawn as gan_step draws them (one device: examples 0..b-1 of call 0).
    @jax.jit  # one program, not one per op
    def latents(key):
        keys = dev.example_keys(jax.random.fold_in(jax.random.fold_in(key, state_lib.STEP_STREAM), 0),
                                jnp.arange(b))
        return jax.vmap(lambda k: jax.random.normal(k, (16,)))(dev.substream(keys, gan_step._Z))

    z = np.asarray(latents(state["key"]))
    new, metrics = jax.device_get(train(state, {"image": jnp.asarray(images)}))  # donates `state`

    tg, td = ref.G(nz=16, ngf=8), ref.D(ndf=8)
    # jaxgen's layers in torch's: (name, torch module index, layout), as test_dcgan64_computes_... maps them back.
    layout = {"dense": lambda k: k.reshape(16, 4, 4, -1).transpose(0, 3, 1, 2),  # == ConvTranspose2d(nz, C, 4)
              "convT": lambda k: k.transpose(2, 3, 0, 1), "conv": lambda k: k.transpose(3, 2, 0, 1),
              "out": lambda k: k[:, 0].reshape(4, 4, -1).transpose(2, 0, 1)[None]}  # == Conv2d(C, 1, 4)
    g_map = [("Dense_0", 0, "dense"), *((f"BatchNorm_{i}", 3 * i + 1, "bn") for i in range(4)),
             *((f"ConvTranspose2x_{i}", 3 * i + 3, "convT") for i in range(4))]
    d_map = [("ConvDown2x_0", 0, "conv"), *((f"ConvDown2x_{i}", 3 * i - 1, "conv") for i in (1, 2, 3)),
             *((f"BatchNorm_{i}", 3 * i + 3, "bn") for i in range(3)), ("Dense_0", 11, "out")]

    def leaves(variables, net, mapping):  # (name, jaxgen's value in torch's layout, torch's tensor)
        for name, i, kind in mapping:
            m, p = net.net[i], variables["params"][name]
            if kind == "bn":
                yield from ((f"{name}.scale", p["scale"], m.weight), (f"{name}.bias", p["bias"], m.bias))
            else:
                yield f"{name}.kernel", layout[kind](p["kernel"]), m.weight

    with torch.no_grad():
        for net, mapping, key in ((tg, g_map, "g"), (td, d_map, "d")):
            for name, value, tensor in leaves(init[key], net, mapping):
                assert tuple(tensor.shape) == value.shape, name
                tensor.copy_(torch.from_numpy(np.array(value)))  # a writable copy
    og, od = (torch.optim.Adam(n.parameters(), 2e-4, betas=(0.5, 0.999)) for n in (tg, td))
    real = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    ld, lg = ref.gan_step_fn(tg, td, og, od, False)(real, torch.from_numpy(np.array(z))[:, :, None, None])
    assert metrics["d_loss"][0] == pytest.approx(ld.item(), rel=1e-5)
    assert metrics["g_loss"][0] == pytest.approx(lg.item(), rel=1e-4)
    for net, mapping, key, opt in ((tg, g_map, "g", og), (td, d_map, "d", od)):
        mu = next(s.mu for s in jax.tree.leaves(new[f"{key}_opt"], is_leaf=lambda x: hasattr(x, "mu"))
                  if hasattr(s, "mu"))
        for (name, grad, tensor), (_, value, _) in zip(leaves({"params": mu}, net, mapping),
                                                       leaves(new[key], net, mapping)):
            want = opt.state[tensor]["exp_avg"].numpy()  # (1 - b1) * gradient, on both sides
            np.testing.assert_allclose(grad, want, atol=2e-3 * np.abs(want).max(), err_msg=f"{key} {name} grad")
            diff = np.abs(value - tensor.detach().numpy())
            assert diff.max() <= 2.5e-4 * 2 and np.mean(diff > 1e-6) < 0.02, (key, name, diff.max())


def test_dcgan_init_follows_radford_et_al():
    g, d = gan.build(_config("dcgan"), (64, 64, 3))
    gv, _ = jax.jit(lambda: _init(g, d, (64, 64, 3)))()
    k = np.asarray(gv["params"]["ConvTranspose2x_0"]["kernel"])
    scale = np.asarray(gv["params"]["BatchNorm_0"]["scale"])
    assert abs(k.std() - 0.02) < 0.002 and abs(k.mean()) < 0.002
    assert abs(scale.mean() - 1) < 0.01 and 0.01 < scale.std() < 0.03


def test_spectrally_normalised_kernels_start_as_their_initializer_drew_them():
    """As in Miyato et al.'s code and PyTorch: the stored kernel is the Glorot draw (flax's init would store it
    divided by its first sigma estimate, 1.5x smaller here); D's output, which divides by sigma, is unchanged."""
    d = gan.ResNetDiscriminator((32, 32, 3), width=64, spectral_norm=True)

    @jax.jit  # both inits as one program: outside jit each op would be one
    def init():
        x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
        return x, d.init(jax.random.key(0), x, train=False), gan.init_variables(d, jax.random.key(0), x, train=False)

    x, flax_init, ours = init()
    apply = jax.jit(functools.partial(d.apply, train=False))  # compiled once, for both variables
    y_ours, y_flax = apply(ours, x), apply(flax_init, x)
    kernel = ours["params"]["_ResBlock_1"]["conv1"]["kernel"]  # 3x3, 128 -> 128, Glorot uniform with gain sqrt(2)
    assert float(jnp.std(kernel)) == pytest.approx(np.sqrt(2) * np.sqrt(2 / (2 * 9 * 128)), rel=0.03)
    assert float(jnp.std(flax_init["params"]["_ResBlock_1"]["conv1"]["kernel"])) < 0.8 * float(jnp.std(kernel))
    np.testing.assert_allclose(y_ours, y_flax, rtol=1e-5, atol=1e-5)
    assert "bias" not in ours["params"]["Dense_0"]  # SNGAN's last layer has none


@pytest.mark.parametrize("name,options", [("resnet", {"d_norm": "none", "d_spectral_norm": False, "g_norm": "none"}),
                                          ("dcgan", {"conv_impl": "xla", "d_norm": "none", "g_norm": "none"})],
                         ids=["resnet", "dcgan_xla"])
def test_bfloat16_bias_gradients_are_summed_in_float32(name, options):
    """A bias's gradient sums the cotangent over every position of the batch (65k terms at 32x32, batch 64), which
    XLA:CPU summed in bfloat16, rounding every partial sum: the SNGAN D's conv bias gradients were 52-95% off here
    (their kernels' 0.2-1%), its whole gradient norm half the float32 one. The biases are now added, and their
    gradients summed, in float32: each bias gradient of a bfloat16 G and D is as close to the float32 computation's
    as its layer's kernel gradient is (that error is the bfloat16 forward pass's; G's, without BatchNorm, ~5%)."""
    shape = (32, 32, 3)
    nets = {dt: gan.build(_config(name, width=4, dtype=dt, **options), shape) for dt in ("float32", "bfloat16")}
    gv, dv = _init(*nets["float32"], shape)
    z, x = jax.jit(lambda: (jax.random.normal(jax.random.key(3), (64, 16)),  # one program, not one per op
                            jax.random.uniform(jax.random.key(4), (64, *shape), minval=-1.0, maxval=1.0)))()

    def grads(dt):
        g, d = nets[dt]
        return jax.jit(jax.grad(lambda p: (jnp.sum(g.apply({**gv, "params": p[0]}, z, train=False) * x)
                                           + jnp.sum(d.apply({**dv, "params": p[1]}, x, train=False)))))(
            (gv["params"], dv["params"]))

    exact, low = grads("float32"), grads("bfloat16")
    relative = jax.jit(lambda exact, low: jax.tree.map(lambda a, b: jnp.linalg.norm(b - a) / jnp.linalg.norm(a),
                                                       exact, low))  # one program for all leaves, not 3 ops each
    error = {jax.tree_util.keystr(path): float(e)
             for path, e in jax.tree_util.tree_flatten_with_path(relative(exact, low))[0]}
    biases = [k for k in error if k.endswith("['bias']")]
    assert len(biases) >= 3
    off = {b: (round(error[b], 4), round(error[b.replace("['bias']", "['kernel']")], 4)) for b in biases
           if error[b] > 1.5 * error[b.replace("['bias']", "['kernel']")] + 0.005}
    assert not off, f"bias gradient errors (bias, its kernel's) relative to float32: {off}"
