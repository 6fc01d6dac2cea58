"""On-device augmentation: the contract every augmentation keeps, and each one checked exactly against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxgen import parallel
from jaxgen.data import augment

B, H, W, C = 8, 16, 16, 3
KEY = jax.random.key(0)


def my_aug(key, x):
    """A user's own augmentation, referred to as 'tests.test_augment:my_aug'."""
    return -x


def _images(b=B, h=H, w=W, c=C, seed=0, low=0.1):
    """Random images in [low, 1]: no exact zeros, so the zero fill is recognisable."""
    return np.random.default_rng(seed).uniform(low, 1.0, (b, h, w, c)).astype(np.float32)


def _shifted(img, dy, dx):
    """numpy reference: out[i, j] = img[i + dy, j + dx] inside the image, else 0."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[i, j] = img[i + dy, j + dx]
    return out


@pytest.mark.parametrize("name", sorted(augment.AUGMENTATIONS))
def test_contract(name):
    fn = jax.jit(augment.AUGMENTATIONS[name])
    x = jnp.asarray(_images())
    out = fn(KEY, x)
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, fn(KEY, x))  # a fixed key draws the same
    assert not np.array_equal(out, fn(jax.random.key(1), x))
    xb = x.astype(jnp.bfloat16)
    assert fn(KEY, xb).dtype == jnp.bfloat16
    # One image repeated: each example gets its own draw, so the outputs differ.
    same = jnp.broadcast_to(x[:1], x.shape)
    outs = np.asarray(fn(KEY, same)).reshape(B, -1)
    assert len({row.tobytes() for row in outs}) > 1
    # Differentiable in x: the gradient of a weighted sum is finite and not all zero.
    weights = jnp.asarray(_images(seed=1))
    g = jax.jit(jax.grad(lambda x: jnp.sum(augment.AUGMENTATIONS[name](KEY, x) * weights)))(x)
    assert g.shape == x.shape and np.all(np.isfinite(g)) and np.any(g != 0)


def test_translation_is_an_integer_shift_with_zero_fill():
    x = _images()
    out = np.asarray(jax.jit(augment.translation)(KEY, jnp.asarray(x)))
    s = augment._side(H, augment.RANGES["translation"])
    assert s == 2
    found = []
    for b in range(B):
        matches = [
            (dy, dx)
            for dy in range(-s, s + 1)
            for dx in range(-s, s + 1)
            if np.array_equal(out[b], _shifted(x[b], dy, dx))
        ]
        assert len(matches) == 1, f"example {b}: {matches}"
        found.append(matches[0])
    assert len(set(found)) > 1


def test_shift_matches_numpy_for_given_offsets():
    x = _images(b=3)
    dy, dx = np.array([-2, 0, 3]), np.array([1, -3, 0])
    out = np.asarray(jax.jit(augment.shift)(x, dy, dx))  # one program, not one per op
    for b in range(3):
        np.testing.assert_array_equal(out[b], _shifted(x[b], dy[b], dx[b]))


def test_flip_is_identity_or_width_flip():
    x = _images()
    out = np.asarray(jax.jit(augment.flip)(KEY, jnp.asarray(x)))
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_cutout_zeroes_one_clipped_square():
    x = _images(b=32)
    out = np.asarray(jax.jit(augment.cutout)(jax.random.key(3), jnp.asarray(x)))
    side = augment._side(H, augment.RANGES["cutout"])
    clipped = 0
    for o, xi in zip(out, x):
        changed = np.any(o != xi, axis=-1)
        rows, cols = np.nonzero(changed)
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert changed[r0:r1, c0:c1].all() and changed.sum() == (r1 - r0) * (c1 - c0)  # one rectangle
        assert np.all(o[r0:r1, c0:c1] == 0)
        for lo, hi, n in ((r0, r1, H), (c0, c1, W)):
            assert hi - lo == side or (hi - lo < side and (lo == 0 or hi == n))  # the square, clipped at a border
        clipped += (r1 - r0, c1 - c0) != (side, side)
    assert clipped > 0


def test_color_parts_match_numpy():
    x = _images(low=-1.0)
    f = np.linspace(0.1, 1.9, B).astype(np.float32)
    expect = x + f[:, None, None, None]
    np.testing.assert_allclose(augment.brightness(jnp.asarray(x), jnp.asarray(f)), expect, atol=1e-6)
    m = x.mean(axis=-1, keepdims=True)
    expect = (x - m) * f[:, None, None, None] + m
    np.testing.assert_allclose(augment.saturation(jnp.asarray(x), jnp.asarray(f)), expect, atol=1e-6)
    m = x.mean(axis=(1, 2, 3), keepdims=True)
    expect = (x - m) * f[:, None, None, None] + m
    np.testing.assert_allclose(augment.contrast(jnp.asarray(x), jnp.asarray(f)), expect, atol=1e-6)


def test_color_draws_stay_in_the_stated_ranges():
    # Brightness alone moves the per-image mean by the draw; saturation and contrast keep it.
    x = jnp.zeros((256, 2, 2, 3))
    delta = np.asarray(augment.color(KEY, x))[:, 0, 0, 0]
    lo, hi = augment.RANGES["brightness"]
    assert lo <= delta.min() and delta.max() <= hi and delta.max() - delta.min() > 0.8 * (hi - lo)


def test_resampler_identity_rot90_and_full_crop():
    x = _images(low=-1.0)
    eye = np.broadcast_to(np.eye(2, dtype=np.float32), (B, 2, 2))
    zeros, ones = np.zeros((B, 2), np.float32), np.ones((B,), np.float32)
    # jitted once each (crop_resize for both crops): outside jit each of their ops would be a program of its own
    resample_affine, rotate, zoom, crop_resize = map(jax.jit, (augment.resample_affine, augment.rotate, augment.zoom,
                                                               augment.crop_resize))
    np.testing.assert_array_equal(resample_affine(x, eye, zeros), x)
    rot = np.asarray(rotate(x, np.full((B,), 90.0, np.float32)))
    np.testing.assert_allclose(rot, np.rot90(x, axes=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(zoom(x, ones), x, atol=1e-6)
    np.testing.assert_allclose(crop_resize(x, ones, zeros), x, atol=1e-6)
    # A half-size crop at the top-left corner, resized, is 2x nearest-like sampling of that quarter's interior.
    half = np.asarray(crop_resize(x, np.full((B,), 0.5, np.float32), zeros))
    q = x[:, : H // 2, : W // 2]
    np.testing.assert_allclose(
        half[:, 1:-1:2, 1:-1:2],
        0.75 * 0.75 * q[:, :-1, :-1] + 0.75 * 0.25 * (q[:, 1:, :-1] + q[:, :-1, 1:]) + 0.25 * 0.25 * q[:, 1:, 1:],
        atol=1e-5,
    )


def test_a_crop_reads_its_edge_pixels_and_does_not_fade_them():
    """The crop window lies inside the image: a constant image stays constant, corners and edges included (the
    pixel-area map overshoots by up to half an output pixel, which the zero fill would blend in)."""
    ones = np.ones((64, 9, 11, 3), np.float32)
    crop = jax.jit(augment.crop)  # one program for the three keys, not one per op
    for seed in range(3):
        np.testing.assert_allclose(crop(jax.random.key(seed), ones), 1.0, atol=1e-6)
    np.testing.assert_allclose(jax.jit(augment.crop_resize)(ones, np.full((64,), 0.8, np.float32),
                                                            np.zeros((64, 2), np.float32)), 1.0, atol=1e-6)


def test_rotation_and_scale_draws_stay_in_their_ranges():
    # One bright pixel 6 px right of the centre of a 17 x 17 image: the output's centroid shows the drawn map.
    n, r = 64, 6
    x = np.zeros((n, 17, 17, 1), np.float32)
    x[:, 8, 8 + r] = 1.0
    rows, cols = np.mgrid[:17, :17] - 8.0

    def centroids(out):
        out = np.asarray(out)[..., 0]
        m = out.sum(axis=(1, 2))
        return (out * rows).sum(axis=(1, 2)) / m, (out * cols).sum(axis=(1, 2)) / m

    dy, dx = centroids(jax.jit(augment.rotation)(KEY, jnp.asarray(x)))
    angle = np.degrees(np.arctan2(-dy, dx))  # counter-clockwise as displayed
    lo, hi = augment.RANGES["rotation"]
    assert lo - 1 <= angle.min() and angle.max() <= hi + 1 and angle.max() - angle.min() > 0.8 * (hi - lo)
    dy, dx = centroids(jax.jit(augment.scale)(KEY, jnp.asarray(x)))
    factor = np.hypot(dy, dx) / r
    lo, hi = augment.RANGES["scale"]
    assert lo - 0.02 <= factor.min() and factor.max() <= hi + 0.02 and factor.max() - factor.min() > 0.1


def test_apply_composes_in_order_with_folded_keys():
    x = jnp.asarray(_images())
    np.testing.assert_array_equal(augment.apply("", KEY, x), x)
    got = jax.jit(lambda k, x: augment.apply("flip,translation", k, x))(KEY, x)
    # jitted too (both are data movement: exact either way): outside jit each op would be a program of its own
    want = jax.jit(lambda k, x: augment.translation(jax.random.fold_in(k, 1), augment.flip(jax.random.fold_in(k, 0),
                                                                                           x)))(KEY, x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        jax.jit(lambda k, x: augment.apply("flip, tests.test_augment:my_aug", k, x))(KEY, x),
        jax.jit(lambda k, x: -augment.flip(jax.random.fold_in(k, 0), x))(KEY, x),
    )


def test_check_policy():
    augment.check_policy("")
    augment.check_policy("color,translation,cutout,flip,rotation,scale,crop,tests.test_augment:my_aug")
    with pytest.raises(ValueError, match="unknown augmentation 'bogus'; choices: color, crop, cutout, flip"):
        augment.check_policy("flip,bogus")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        augment.check_policy("tests.test_augment:nope")


def test_runs_per_device_inside_shard_map():
    mesh = parallel.make_mesh()
    policy = "color,translation,cutout,flip,rotation,scale,crop"

    def body(key, x):
        return augment.apply(policy, jax.random.fold_in(key, jax.lax.axis_index(parallel.AXIS)), x)

    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(parallel.AXIS)), out_specs=P(parallel.AXIS)))
    x = jnp.asarray(_images(b=2 * mesh.size))
    out = np.asarray(f(KEY, x))
    assert out.shape == x.shape and np.all(np.isfinite(out))
    assert not np.array_equal(out[:2], out[2:4])  # devices draw differently
    g = jax.jit(jax.grad(lambda x: jnp.sum(f(KEY, x) ** 2)))(x)  # one program, not the forward, backward and ops
    assert np.all(np.isfinite(g)) and np.any(g != 0)
