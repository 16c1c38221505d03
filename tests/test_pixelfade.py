"""PixelFade: replacement chunks, one and three iterations checked by hand, the compiled loop against an independent
float64 NumPy re-implementation (batch and image constraints), padding, compiled vs Python loop, determinism and
config validation. Feature functions are small linear maps (hand-computable gradients) or tanh of one."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from anon_jax.privacy.pixelfade import (CONSTRAINTS, FEATURE_SOURCES, NEVER_REPLACED, PixelFadeError, check_config,
                                        make_protect_fn, noise_images, pixelfade_config, protect,
                                        protect_python_loop, replacement_chunks)

IMAGE_SHAPE = (4, 3, 3)  # H, W, C
PIXELS = int(np.prod(IMAGE_SHAPE))
FEATURES = 4


def make_config(**fields):
    # Not type-safe, so that test_check_config_names_the_field can store wrong types.
    config = ml_collections.ConfigDict(pixelfade_config().to_dict(), type_safe=False)
    for name, value in fields.items():
        config[name] = value
    return config


def make_case(seed, batch=2, num_chunks=3, noise_scale=1.5):
    """Images in [-1, 1], N(0, noise_scale^2) targets, hand-made chunks (k % num_chunks over a random order, the
    first 4 ranks never replaced) and a (PIXELS, FEATURES) feature matrix."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1.0, 1.0, (batch,) + IMAGE_SHAPE).astype(np.float32)
    noise = (noise_scale * rng.normal(size=images.shape)).astype(np.float32)
    ranks = np.empty(images.size, np.int64)
    ranks[rng.permutation(images.size)] = np.arange(images.size)
    chunks = np.where(ranks < 4, NEVER_REPLACED, ranks % num_chunks).astype(np.int8).reshape(images.shape)
    weights = (rng.normal(size=(PIXELS, FEATURES)) / np.sqrt(PIXELS)).astype(np.float32)
    return images, noise, chunks, weights


def linear_features(weights):
    weights = jnp.asarray(weights, jnp.float32)
    return lambda x: x.reshape(x.shape[0], -1) @ weights


def run(images, noise, chunks, weights, config, valid=None, python_loop=False):
    fn = protect_python_loop if python_loop else protect
    out = fn(linear_features(weights), jnp.asarray(images), jnp.asarray(chunks), jnp.asarray(noise), config, valid)
    return {name: np.asarray(value) for name, value in out.items()}


# ---------------------------------------------------------------------------------------------- hand formulas


def feats(x, weights):
    return x.reshape(x.shape[0], -1).astype(np.float64) @ weights.astype(np.float64)


def normalised_grad(x, reference, weights, valid=None):
    """Per-image gradient of mean((x W - r)^2) over (valid images) x features, divided by each image's mean |g|
    (zero for a zero gradient)."""
    valid = np.ones(len(x), bool) if valid is None else valid
    diff = feats(x, weights) - reference
    grad = (2.0 / (valid.sum() * weights.shape[1])) * (diff @ weights.T.astype(np.float64)) * valid[:, None]
    scale = np.abs(grad).mean(axis=1, keepdims=True)
    grad = np.where(scale > 0, grad / np.where(scale > 0, scale, 1.0), 0.0)
    return grad.reshape(x.shape)


def reference_pixelfade(images, noise, chunks, weights, config, valid=None):
    """The whole PixelFade loop in float64 NumPy (the original's protect_image with per-image or batch decisions).

    Returns (images, last pre-update features, last per-image losses (0 for padded images), per-image replacement
    counts, per-step trace of (replace flags, decision losses, met flags))."""
    batch = len(images)
    valid = np.ones(batch, bool) if valid is None else np.asarray(valid, bool)
    original = images.astype(np.float64)
    reference = feats(original, weights)
    if config.constraint == "image":
        lo = original.min(axis=(1, 2, 3), keepdims=True)
        hi = original.max(axis=(1, 2, 3), keepdims=True)
    else:
        lo, hi = original[valid].min(), original[valid].max()
    x, momentum = original.copy(), np.zeros_like(original)
    condition = np.ones(batch, bool)
    replacements = np.zeros(batch, np.int64)
    trace = []
    for step in range(config.max_iter):
        replace = (step < config.warmup_iter) | condition
        x = np.where((chunks == step % config.fade_num_iter) & replace[:, None, None, None], noise, x)
        features = feats(x, weights)
        per_image = np.mean((features - reference) ** 2, axis=1) * valid
        if config.constraint == "image":
            decision = per_image
            # The per-image loss's gradient: a positive multiple of the batch one, which the normalisation removes.
            grad = normalised_grad(x, reference, weights, valid)
        else:
            decision = np.full(batch, per_image[valid].mean())
            grad = normalised_grad(x, reference, weights, valid)
        met = (decision < config.epsilon) & (step < config.max_iter - config.repair_steps)
        momentum = config.momentum * momentum + grad
        size = np.where(met, config.beta, config.beta_temp)[:, None, None, None]
        x = np.clip(x - size * momentum, lo, hi)
        replacements += replace
        trace.append((replace.copy(), decision.copy(), met.copy()))
        condition = met
    return x, features, per_image, replacements, trace


# ------------------------------------------------------------------------------------------------- 1. chunks


def test_replacement_chunks_are_disjoint_equal_random_per_element():
    shape = (2,) + IMAGE_SHAPE  # n = 72
    chunks = np.asarray(replacement_chunks(jax.random.PRNGKey(3), shape, 5))
    assert chunks.shape == shape and chunks.dtype == np.int8
    counts = {int(k): int(c) for k, c in zip(*np.unique(chunks, return_counts=True))}
    # int(72 / 5) = 14 elements per chunk; the 72 mod 5 = 2 left over are never replaced.
    assert counts == {NEVER_REPLACED: 2, 0: 14, 1: 14, 2: 14, 3: 14, 4: 14}
    # Without a remainder every element is in exactly one chunk.
    even = np.asarray(replacement_chunks(jax.random.PRNGKey(3), shape, 3))
    assert sorted(np.unique(even, return_counts=True)[1].tolist()) == [24, 24, 24]
    # A random permutation, not contiguous runs.
    assert not np.array_equal(chunks.reshape(-1)[:14], np.zeros(14))
    np.testing.assert_array_equal(chunks, replacement_chunks(jax.random.PRNGKey(3), shape, 5))
    assert not np.array_equal(chunks, replacement_chunks(jax.random.PRNGKey(4), shape, 5))
    # Per element: the three channels of a pixel are drawn independently, so some pixel spans several chunks.
    large = np.asarray(replacement_chunks(jax.random.PRNGKey(0), (2, 8, 8, 3), 5))
    spans = np.array([len(set(pixel)) for pixel in large.reshape(-1, 3).tolist()])
    assert (spans > 1).any()
    # ...and the chunks are over the whole batch tensor, not per image: the per-image counts vary.
    per_image = [(large[b] == 0).sum() for b in range(2)]
    assert sum(per_image) == int(large.size / 5) and per_image[0] != per_image[1]


@pytest.mark.parametrize("num_chunks", [0, 128, 2.0])
def test_replacement_chunks_rejects_bad_counts(num_chunks):
    with pytest.raises(PixelFadeError, match="num_chunks"):
        replacement_chunks(jax.random.PRNGKey(0), (1,) + IMAGE_SHAPE, num_chunks)


# ---------------------------------------------------------------------------------------- 2. one iteration


@pytest.mark.parametrize("constraint_met", [True, False])
def test_one_iteration_by_hand(constraint_met):
    images, noise, chunks, weights = make_case(0, noise_scale=3.0)
    images[1] = 1.5 * images[1] + 0.5  # image 1 spans [-1, 2] (about): the batch range is wider than image 0's
    images[1].flat[0], images[1].flat[1] = 2.0, -1.0
    images[0].flat[0], images[0].flat[1] = 1.0, -1.0
    noise[0] *= 0.2  # image 0's gradient is much smaller than image 1's: the normalisation is per image
    lo, hi = -1.0, 2.0

    x0 = images.astype(np.float64)
    replaced = np.where(chunks == 0, noise, x0)  # step 0 is a warm-up step: chunk 0 takes the noise
    diff = feats(replaced, weights) - feats(x0, weights)
    per_image = np.mean(diff ** 2, axis=1)
    loss = per_image.mean()
    grad = (2.0 / diff.size) * diff @ weights.T.astype(np.float64)  # d mean((xW - r)^2) / dx, (B, PIXELS)
    scale = np.abs(grad).mean(axis=1, keepdims=True)
    assert scale[1, 0] > 3 * scale[0, 0]
    momentum = (grad / scale).reshape(images.shape)  # m = 0.6 * 0 + g
    epsilon = 1.05 * loss if constraint_met else 0.95 * loss
    beta = 0.01 if constraint_met else 0.04
    unclamped = replaced - beta * momentum
    expected = np.clip(unclamped, lo, hi)
    # The case exercises the clamp to the original batch range: steps leave it on both sides, and some elements of
    # image 0 land above image 0's own maximum 1 but inside the batch's 2.
    assert (unclamped > hi).any() and (unclamped < lo).any()
    assert ((expected[0] > 1.0) & (expected[0] < hi)).any()

    config = make_config(max_iter=1, warmup_iter=1, repair_steps=0, fade_num_iter=3, epsilon=float(epsilon))
    out = run(images, noise, chunks, weights, config)
    np.testing.assert_allclose(out["images"], expected, rtol=0, atol=1e-5)
    assert out["images"].min() == np.float32(lo) and out["images"].max() == np.float32(hi)
    np.testing.assert_allclose(out["features"], feats(replaced, weights), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["loss"], per_image, rtol=1e-5)
    np.testing.assert_array_equal(out["replacements"], [1, 1])


# ------------------------------------------------------------------------------------- 3. three iterations


@pytest.mark.parametrize("schedule", ["always_met", "violated_then_met"])
def test_three_iterations_by_hand(schedule):
    """Momentum m = 0.6 m + g over three steps, and the replacement at step s (chunk s % 3) only when step s - 1
    met the constraint: in "violated_then_met" step 1 does not replace and step 2 replaces chunk 2 (not 1)."""
    images, noise, chunks, weights = make_case(1)
    x0 = images.astype(np.float64)
    reference = feats(x0, weights)
    lo, hi = x0.min(), x0.max()

    def loss(x):
        return np.mean((feats(x, weights) - reference) ** 2)

    x = np.where(chunks == 0, noise, x0)  # step 0: warm-up, chunk 0
    loss0, m = loss(x), normalised_grad(x, reference, weights)
    if schedule == "always_met":
        epsilon, replaced_chunks = 1e6, [0, 1, 2]
        x = np.clip(x - 0.01 * m, lo, hi)
        x = np.where(chunks == 1, noise, x)  # step 1: step 0 met, chunk 1
        m = 0.6 * m + normalised_grad(x, reference, weights)
        x = np.clip(x - 0.01 * m, lo, hi)
        x = np.where(chunks == 2, noise, x)  # step 2: step 1 met, chunk 2
    else:
        replaced_chunks = [0, 2]
        x = np.clip(x - 0.04 * m, lo, hi)  # step 0 violated: beta_temp
        loss1 = loss(x)  # step 1: no replacement
        assert loss1 < 0.99 * loss0
        epsilon = (loss0 + loss1) / 2  # step 0 violated, step 1 met
        m = 0.6 * m + normalised_grad(x, reference, weights)
        x = np.clip(x - 0.01 * m, lo, hi)
        x = np.where(chunks == 2, noise, x)  # step 2 = 2 % 3: chunk 2
    features = feats(x, weights)
    loss2 = loss(x)
    assert abs(loss2 - epsilon) > 1e-3 * epsilon
    m = 0.6 * m + normalised_grad(x, reference, weights)
    x = np.clip(x - (0.01 if loss2 < epsilon else 0.04) * m, lo, hi)

    config = make_config(max_iter=3, warmup_iter=1, repair_steps=0, fade_num_iter=3, epsilon=float(epsilon))
    out = run(images, noise, chunks, weights, config)
    np.testing.assert_allclose(out["images"], x, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["features"], features, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["replacements"], [len(replaced_chunks)] * 2)
    # With the momentum dropped (mu = 0) the result is measurably different.
    no_momentum = run(images, noise, chunks, weights, make_config(**{**config.to_dict(), "momentum": 0.0}))
    assert np.abs(no_momentum["images"] - x).max() > 1e-3


# --------------------------------------------------------------------- 4. the whole loop against a reference


LOOP = dict(max_iter=12, warmup_iter=2, fade_num_iter=3, repair_steps=2)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_loop_matches_numpy_reference(constraint):
    images, noise, chunks, weights = make_case(2, batch=3, noise_scale=1.0)
    epsilon = 0.02  # mixes met and violated steps on this case (asserted below)
    config = make_config(epsilon=epsilon, constraint=constraint, **LOOP)
    x, features, losses, replacements, trace = reference_pixelfade(images, noise, chunks, weights, config)
    decisions = np.array([loss for _, loss, _ in trace])
    met = np.array([flag for _, _, flag in trace])
    # Decisions are far from the threshold (float32 cannot flip one), and both outcomes occur before the repair.
    assert (np.abs(decisions - epsilon) > 1e-3 * epsilon).all()
    assert met[:10].any() and not met[:10].all() and not met[10:].any()
    if constraint == "image":
        assert (met[:10] != met[:10, :1]).any()  # the images decide differently at some step

    out = run(images, noise, chunks, weights, config)
    np.testing.assert_allclose(out["images"], x, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["features"], features, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["loss"], losses, rtol=1e-4, atol=1e-7)
    np.testing.assert_array_equal(out["replacements"], replacements)


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_replacement_counts_on_scripted_decisions(constraint):
    """Constraint always met: steps 0..10 replace (step 10 is a repair step, but step 9 met) and step 11 does not
    (a repair step never meets); never met: only the warm-up steps replace; warm-up 0 still replaces at step 0 (the
    original starts with cond = True)."""
    images, noise, chunks, weights = make_case(3)
    counts = {}
    for name, fields in {"always": dict(epsilon=1e6), "never": dict(epsilon=1e-12),
                         "never_no_warmup": dict(epsilon=1e-12, warmup_iter=0)}.items():
        config = make_config(**{**LOOP, **fields, "constraint": constraint})
        out = run(images, noise, chunks, weights, config)
        counts[name] = out["replacements"].tolist()
        expected = reference_pixelfade(images, noise, chunks, weights, config)
        np.testing.assert_allclose(out["images"], expected[0], atol=1e-5)
    assert counts == {"always": [11, 11], "never": [2, 2], "never_no_warmup": [1, 1]}
    # The Python loop starts from the same cond = True.
    loop = run(images, noise, chunks, weights, config, python_loop=True)
    np.testing.assert_array_equal(loop["replacements"], [1, 1])
    np.testing.assert_allclose(loop["images"], expected[0], atol=1e-5)


def test_loss_equal_to_epsilon_violates():
    """The constraint is L < epsilon (strict): with epsilon set to the exact float32 loss, the step is beta_temp."""
    images, noise, chunks, weights = make_case(9, batch=1)
    fields = dict(max_iter=1, warmup_iter=1, repair_steps=0, fade_num_iter=3, constraint="image")
    loss = float(run(images, noise, chunks, weights, make_config(epsilon=1.0, **fields))["loss"][0])
    just_above = float(np.nextafter(np.float32(loss), np.float32(np.inf)))
    outs = {eps: run(images, noise, chunks, weights, make_config(epsilon=eps, **fields))
            for eps in (loss, just_above, 1e-9, 1e9)}
    np.testing.assert_array_equal(outs[loss]["loss"], outs[just_above]["loss"])  # the same float32 loss
    np.testing.assert_allclose(outs[loss]["images"], outs[1e-9]["images"], rtol=0, atol=1e-7)  # beta_temp
    np.testing.assert_allclose(outs[just_above]["images"], outs[1e9]["images"], rtol=0, atol=1e-7)  # beta
    assert np.abs(outs[1e-9]["images"] - outs[1e9]["images"]).max() > 1e-3


def test_repair_steps_use_beta_temp():
    """Below epsilon throughout: the last two steps take beta_temp (0.04), the rest beta (0.01)."""
    images, noise, chunks, weights = make_case(4)
    base = dict(LOOP, epsilon=1e6, max_iter=4, repair_steps=1, warmup_iter=4)
    out = run(images, noise, chunks, weights, make_config(**base))
    # The same run with beta_temp = beta must differ only through the final (repair) step.
    same = run(images, noise, chunks, weights, make_config(**base, beta_temp=0.01))
    no_repair = run(images, noise, chunks, weights, make_config(**{**base, "repair_steps": 0}))
    np.testing.assert_allclose(same["images"], no_repair["images"], rtol=0, atol=1e-7)
    assert np.abs(out["images"] - no_repair["images"]).max() > 1e-3
    x = reference_pixelfade(images, noise, chunks, weights, make_config(**base))[0]
    np.testing.assert_allclose(out["images"], x, atol=1e-5)


# ------------------------------------------------------------------------------------- 5. image vs batch


def test_image_constraint_decides_and_clamps_per_image():
    images, noise, chunks, weights = make_case(5)
    images[1] = 3.0 * images[1]  # image 1 spans about [-3, 3], image 0 [-1, 1]
    noise[0] = images[0] + 0.02 * noise[0]  # image 0's target is close to itself: a small loss, under epsilon
    noise[1] = 3.0 * noise[1]
    epsilon = 0.05
    fields = dict(max_iter=4, warmup_iter=1, fade_num_iter=3, repair_steps=0, epsilon=epsilon)
    outs, refs = {}, {}
    for constraint in CONSTRAINTS:
        config = make_config(constraint=constraint, **fields)
        outs[constraint] = run(images, noise, chunks, weights, config)
        refs[constraint] = reference_pixelfade(images, noise, chunks, weights, config)
        np.testing.assert_allclose(outs[constraint]["images"], refs[constraint][0], atol=1e-5)
    trace = refs["image"][4]
    assert all(met[0] and not met[1] for _, _, met in trace)  # image 0 always meets, image 1 never
    assert not any(met.any() for _, _, met in refs["batch"][4])  # the batch mean never does
    np.testing.assert_array_equal(outs["image"]["replacements"], [4, 1])
    np.testing.assert_array_equal(outs["batch"]["replacements"], [1, 1])
    # Per-image clamp: image 0 stays inside its own range under "image" but not under "batch".
    assert outs["image"]["images"][0].max() <= images[0].max()
    assert outs["image"]["images"][0].min() >= images[0].min()
    assert (outs["batch"]["images"][0].max() > images[0].max() + 1e-3
            or outs["batch"]["images"][0].min() < images[0].min() - 1e-3)
    # Under "image" an image's result does not depend on its batch-mates.
    alone = run(images[:1], noise[:1], chunks[:1], weights, make_config(constraint="image", **fields))
    np.testing.assert_allclose(alone["images"][0], outs["image"]["images"][0], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ 6. padding


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_padded_image_takes_no_part(constraint):
    images, noise, chunks, weights = make_case(6, batch=3)
    images[2] = 50.0 * images[2]  # would widen the clamp range and dominate the batch loss if it counted
    valid = np.array([True, True, False])
    config = make_config(constraint=constraint, epsilon=0.08, **LOOP)
    trace = reference_pixelfade(images, noise, chunks, weights, config, valid=valid)[4]
    if constraint == "batch":
        # The batch loss is the mean over the 2 valid images: divided by 3 instead, some step would flip to met.
        decisions = np.array([loss[0] for _, loss, _ in trace])
        assert ((decisions >= 0.08) & (decisions * 2 / 3 < 0.08)).any()
    padded = run(images, noise, chunks, weights, config, valid=jnp.asarray(valid))
    pair = run(images[:2], noise[:2], chunks[:2], weights, config)
    for name in ("images", "features", "loss", "replacements"):
        assert np.isfinite(padded[name]).all(), name
        np.testing.assert_allclose(padded[name][:2], pair[name], rtol=1e-6, atol=1e-6, err_msg=name)
    assert padded["loss"][2] == 0.0
    if constraint == "batch":  # in batch mode, counting the third image would change the first two
        everything = run(images, noise, chunks, weights, config)
        assert np.abs(everything["images"][:2] - pair["images"]).max() > 1e-3
    x = reference_pixelfade(images, noise, chunks, weights, config, valid=valid)[0]
    np.testing.assert_allclose(padded["images"][:2], x[:2], atol=1e-5)


# ------------------------------------------------------------------------------- 7. compiled vs Python loop


def tanh_model(variables, x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"])


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_compiled_matches_python_loop(constraint):
    images, noise, chunks, weights = make_case(7, batch=3)
    variables = {"w": jnp.asarray(3 * weights), "b": jnp.linspace(-0.5, 0.5, FEATURES)}
    epsilon = {"batch": 0.5, "image": 0.1}[constraint]  # met at some steps, violated at others
    config = make_config(constraint=constraint, epsilon=epsilon, **LOOP)
    args = (jnp.asarray(images), jnp.asarray(chunks), jnp.asarray(noise))
    compiled = make_protect_fn(tanh_model, config)(variables, *args, jnp.ones(3, bool))
    loop = protect_python_loop(functools.partial(tanh_model, variables), *args, config)
    replacements = np.asarray(loop["replacements"])
    assert (replacements > LOOP["warmup_iter"]).any() and (replacements < LOOP["max_iter"]).all()  # mixed
    for name in ("images", "features", "loss", "replacements"):
        np.testing.assert_allclose(np.asarray(compiled[name]), np.asarray(loop[name]), rtol=1e-6, atol=1e-6,
                                   err_msg=name)


# --------------------------------------------------------------------------------------------- 8. determinism


def seeded_inputs(seed, shape, num_chunks):
    chunk_key, noise_key = jax.random.split(jax.random.PRNGKey(seed))
    return replacement_chunks(chunk_key, shape, num_chunks), noise_images(noise_key, jnp.arange(shape[0]), shape[1:])


def test_seeded_runs_are_deterministic():
    images, _, _, weights = make_case(8)
    config = make_config(constraint="batch", epsilon=0.03, **LOOP)
    variables = {"w": jnp.asarray(weights), "b": jnp.zeros(FEATURES)}
    valid = jnp.ones(2, bool)
    runs = []
    for seed in (0, 0, 1):
        chunks, noise = seeded_inputs(seed, images.shape, config.fade_num_iter)
        fn = make_protect_fn(tanh_model, config)  # a fresh compiled function each time
        runs.append({name: np.asarray(v) for name, v in fn(variables, jnp.asarray(images), chunks, noise,
                                                             valid).items()})
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)
    assert np.abs(runs[0]["images"] - runs[2]["images"]).max() > 0.1


def test_noise_depends_only_on_image_index():
    key = jax.random.PRNGKey(5)
    first = np.asarray(noise_images(key, jnp.arange(3), IMAGE_SHAPE))
    second = np.asarray(noise_images(key, jnp.array([7, 2]), IMAGE_SHAPE))
    assert first.shape == (3,) + IMAGE_SHAPE and first.dtype == np.float32
    np.testing.assert_array_equal(first[2], second[1])
    assert np.abs(first[0] - first[1]).max() > 0.1 and np.abs(first[2] - second[0]).max() > 0.1
    assert not np.array_equal(first, np.asarray(noise_images(jax.random.PRNGKey(6), jnp.arange(3), IMAGE_SHAPE)))
    large = np.asarray(noise_images(key, jnp.arange(4), (32, 16, 3)))  # N(0, 1)
    assert abs(large.mean()) < 0.05 and abs(large.std() - 1.0) < 0.05


# -------------------------------------------------------------------------------------------------- 9. config


def test_default_config_is_valid_and_published():
    config = pixelfade_config()
    check_config(config)
    assert (config.max_iter, config.fade_num_iter, config.warmup_iter, config.repair_steps) == (100, 5, 5, 5)
    assert (config.beta, config.beta_temp, config.momentum, config.epsilon) == (0.01, 0.04, 0.6, 0.03)
    assert config.constraint == "batch" and config.feature in FEATURE_SOURCES


@pytest.mark.parametrize("field, value", [
    ("constraint", "foo"), ("feature", "bar"), ("beta", 0), ("beta_temp", -0.1), ("epsilon", 0.0),
    ("momentum", 1.0), ("momentum", -0.1), ("max_iter", 0), ("fade_num_iter", 0), ("fade_num_iter", 128),
    ("batch_size", 2.5), ("warmup_iter", -1), ("repair_steps", True), ("seed", -1),
])
def test_check_config_names_the_field(field, value):
    config = make_config(**{field: value})
    with pytest.raises(PixelFadeError, match=f"pixelfade.{field}="):
        check_config(config)
    with pytest.raises(ValueError, match=f"pixelfade.{field}="):
        make_protect_fn(tanh_model, config)
