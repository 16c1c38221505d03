"""PixelFade (Zhang et al., ACM MM 2024): noise-guided progressive pixel replacement under a ReId feature constraint.

The image x_p starts as the original x (in the ReId model's normalised space) and for `max_iter` steps alternates
  - partial replacement: one of `fade_num_iter` disjoint random chunks of the batch tensor's elements is reset to a
    fixed N(0, 1) noise image eta (always in the first `warmup_iter` steps, afterwards only when the previous step
    met the feature constraint; chunk s % fade_num_iter at step s);
  - constraint step: L = mean((f(x_p) - f(x))^2) over the batch and the feature dimension, g = grad L divided by
    each image's mean |g|, momentum m = momentum * m + g, then x_p -= beta * m when L < epsilon (and s is not in
    the last `repair_steps` steps), x_p -= beta_temp * m otherwise; x_p is clamped to the original batch's global
    [min, max].
`constraint="batch"` is the original's single decision for the whole batch (one loss, one clamp range);
`constraint="image"` decides, and clamps, each image on its own, so an image's result does not depend on its
batch-mates' losses (the replacement chunks still depend on its position in the batch).

The whole loop is one compiled function (`lax.fori_loop`, vectorised over the batch); `make_python_loop_fn` is the
same algorithm as a per-iteration Python loop, kept as the reference for tests and the benchmark.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

CONSTRAINTS = ("batch", "image")
FEATURE_SOURCES = ("pre_update", "final")
NEVER_REPLACED = -1  # chunk index of the n mod fade_num_iter elements no chunk takes


class PixelFadeError(ValueError):
    """A PixelFade setting or input that the algorithm cannot run with."""


def pixelfade_config() -> ml_collections.ConfigDict:
    """PixelFade's published settings (protect_image.py defaults, Market-1501 / MSMT17)."""
    config = ml_collections.ConfigDict()
    config.max_iter = 100  # iterations per batch (always all of them: there is no early exit)
    config.fade_num_iter = 5  # disjoint replacement chunks, each int(n / fade_num_iter) of the batch's n elements
    config.warmup_iter = 5  # the first steps always replace (every chunk once)
    config.repair_steps = 5  # the last steps never replace and always take beta_temp
    config.beta = 0.01  # step size when the feature constraint is met
    config.beta_temp = 0.04  # step size when it is violated (the original's run.sh: 0.02 on CUHK03)
    config.momentum = 0.6  # momentum of the normalised gradients
    config.epsilon = 0.03  # feature constraint: mean squared feature difference below this
    config.constraint = "batch"  # "batch" (the original: one loss for the batch) | "image" (each image alone)
    config.batch_size = 20  # images protected together (the replacement chunks are drawn for this shape)
    config.seed = 0  # replacement chunks and noise images
    # Which feature the ReId evaluation of protected images uses: "final" re-extracts f of the returned image;
    # "pre_update" is the original's, the feature of the last iteration before its final gradient step.
    config.feature = "final"  # "final" | "pre_update" (see above)
    return config


def check_config(config) -> None:
    """Raises PixelFadeError naming the first bad field of a pixelfade_config()-style section."""
    def positive_int(name, minimum=1):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise PixelFadeError(f"pixelfade.{name}={value!r}: must be an integer >= {minimum}.")

    for name in ("max_iter", "fade_num_iter", "batch_size"):
        positive_int(name)
    for name in ("warmup_iter", "repair_steps", "seed"):
        positive_int(name, 0)
    if config.fade_num_iter > 127:  # the chunk indices are int8 (replacement_chunks)
        raise PixelFadeError(f"pixelfade.fade_num_iter={config.fade_num_iter!r}: must be <= 127.")
    for name in ("beta", "beta_temp", "epsilon"):
        if not float(config[name]) > 0:
            raise PixelFadeError(f"pixelfade.{name}={config[name]!r}: must be > 0.")
    if not 0 <= float(config.momentum) < 1:
        raise PixelFadeError(f"pixelfade.momentum={config.momentum!r}: must be in [0, 1).")
    if config.constraint not in CONSTRAINTS:
        raise PixelFadeError(f"pixelfade.constraint={config.constraint!r}: use one of {CONSTRAINTS}.")
    if config.feature not in FEATURE_SOURCES:
        raise PixelFadeError(f"pixelfade.feature={config.feature!r}: use one of {FEATURE_SOURCES}.")


def replacement_chunks(key, shape, num_chunks: int) -> jnp.ndarray:
    """int8 array of `shape`: each element's replacement chunk in 0..num_chunks-1, or NEVER_REPLACED.

    As the original's masks: a uniform random permutation of all elements of the batch tensor (per channel value,
    not per pixel or per image) cut into `num_chunks` disjoint chunks of int(n / num_chunks) elements each.
    """
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, (int, np.integer)) or not 1 <= num_chunks <= 127:
        # Chunk indices are int8: a larger count would wrap around onto NEVER_REPLACED and the other chunks.
        raise PixelFadeError(f"num_chunks (pixelfade.fade_num_iter)={num_chunks!r}: must be an integer in 1..127.")
    n = int(np.prod(shape))
    size = n // num_chunks
    order = jax.random.permutation(key, n)
    chunk_of_rank = jnp.where(jnp.arange(n) < num_chunks * size, jnp.arange(n) // max(size, 1), NEVER_REPLACED)
    return jnp.zeros(n, jnp.int8).at[order].set(chunk_of_rank.astype(jnp.int8)).reshape(shape)


def noise_images(key, indices, image_shape) -> jnp.ndarray:
    """The fixed N(0, 1) targets eta of the images with global `indices` (one draw per image index, so an image's
    target does not depend on the batch it is protected in)."""
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), image_shape, jnp.float32))(indices)


def _per_image_mean(values) -> jnp.ndarray:
    return jnp.mean(values, axis=tuple(range(1, values.ndim)))


def _bounds(images, valid, per_image: bool):
    """The clamp range: each image's own [min, max], or the valid images' global [min, max] for every image."""
    axes = tuple(range(1, images.ndim))
    if per_image:
        # An image's own range needs no mask: masking a padded image would give it the empty range [inf, -inf],
        # which the clamp turns into -inf (and NaN features and losses afterwards).
        return jnp.min(images, axis=axes, keepdims=True), jnp.max(images, axis=axes, keepdims=True)
    # A batch with no valid image at all falls back to its whole range rather than the empty one.
    counted = (valid | ~jnp.any(valid))[:, None, None, None]
    lo = jnp.min(jnp.where(counted, images, jnp.inf), keepdims=True)
    hi = jnp.max(jnp.where(counted, images, -jnp.inf), keepdims=True)
    return lo, hi


def _loss_and_grad_fn(feature_fn: Callable, config, reference, valid):
    """x_p -> (per-image losses, decision losses, features, gradient) against the `reference` features of the
    original images; shared by the compiled and the Python loop."""
    weights = valid.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(weights), 1.0)

    def losses(x):
        features = feature_fn(x)
        per_image = jnp.mean(jnp.square(features - reference), axis=-1) * weights
        # The gradient of the summed per-image losses equals, up to a per-image positive factor that the
        # normalisation removes, the gradient of the batch mean: both variants share it.
        return jnp.sum(per_image), (per_image, features)

    def loss_and_grad(x):
        (_, (per_image, features)), grad = jax.value_and_grad(losses, has_aux=True)(x)
        # The batch loss is the mean over the valid images and the feature dimension (the original's mse mean).
        decision = per_image if config.constraint == "image" else jnp.sum(per_image) / count
        return per_image, decision, features, grad

    return loss_and_grad


def _update(config, bounds, x, momentum, grad, met):
    """The constraint step: per-image normalised gradient, momentum, beta or beta_temp, clamp to `bounds`."""
    scale = _per_image_mean(jnp.abs(grad))[:, None, None, None]
    # A zero gradient (a padded image, or features already exact) gives no step instead of 0 / 0.
    grad = jnp.where(scale > 0, grad / jnp.where(scale > 0, scale, 1.0), 0.0)
    momentum = config.momentum * momentum + grad
    step = jnp.where(met, config.beta, config.beta_temp)
    step = jnp.broadcast_to(step, (x.shape[0],))[:, None, None, None]
    return jnp.clip(x - step * momentum, *bounds), momentum


def _start(feature_fn: Callable, config, images, valid):
    """(reference features f(x), clamp bounds) of the original batch."""
    return jax.lax.stop_gradient(feature_fn(images)), _bounds(images, valid, config.constraint == "image")


def _replace(x, noise, chunks, step: jnp.ndarray, replace, config):
    """Partial replacement at `step`: the elements of chunk step % fade_num_iter take the noise, in the images whose
    `replace` flag is set (a scalar for the batch, or one flag per image)."""
    replace = jnp.broadcast_to(replace, (x.shape[0],))[:, None, None, None]
    mask = (chunks == (step % config.fade_num_iter).astype(chunks.dtype)) & replace
    return jnp.where(mask, noise, x)


def _decision_shape(config, batch: int):
    return () if config.constraint == "batch" else (batch,)


def protect(feature_fn: Callable, images, chunks, noise, config, valid=None) -> dict:
    """PixelFade on one batch (traceable: jit it with the config closed over, see `make_protect_fn`).

    feature_fn maps (B, H, W, C) normalised images to (B, D) features (the authorization model in eval mode);
    `chunks` are replacement_chunks of this batch shape (the original truncates a full-batch mask for a smaller last
    batch: pass chunks[:B]); `noise` the targets eta; `valid` (B,) marks real images when a last batch is padded
    (padded ones take no part in the loss, the decision or the clamp range).

    Returns {"images": x_p, "features": f of the last iteration's image before its final step (the original's
    returned feature), "loss": the last per-image losses, "replacements": per-image number of replacement steps}.
    """
    images = jnp.asarray(images, jnp.float32)
    valid = jnp.ones(images.shape[0], bool) if valid is None else jnp.asarray(valid, bool)
    reference, bounds = _start(feature_fn, config, images, valid)
    loss_and_grad = _loss_and_grad_fn(feature_fn, config, reference, valid)
    shape = _decision_shape(config, images.shape[0])
    last_replace_free = config.max_iter - config.repair_steps

    def body(step, carry):
        x, momentum, condition, _, _, replacements = carry
        replace = (step < config.warmup_iter) | condition
        x = _replace(x, noise, chunks, step, replace, config)
        per_image, decision, features, grad = loss_and_grad(x)
        met = (decision < config.epsilon) & (step < last_replace_free)
        x, momentum = _update(config, bounds, x, momentum, grad, met)
        replacements = replacements + jnp.broadcast_to(replace, replacements.shape).astype(jnp.int32)
        return x, momentum, met, features, per_image, replacements

    batch = images.shape[0]
    features = jnp.zeros((batch, _feature_dim(feature_fn, images)), jnp.float32)
    init = (images, jnp.zeros_like(images), jnp.ones(shape, bool), features, jnp.zeros(batch, jnp.float32),
            jnp.zeros(batch, jnp.int32))
    x, _, _, features, per_image, replacements = jax.lax.fori_loop(0, config.max_iter, body, init)
    return {"images": x, "features": features, "loss": per_image, "replacements": replacements}


def _feature_dim(feature_fn, images) -> int:
    return jax.eval_shape(feature_fn, jax.ShapeDtypeStruct(images.shape, jnp.float32)).shape[-1]


def make_python_loop_fn(apply_fn: Callable, config) -> Callable:
    """The same algorithm as `make_protect_fn`, one Python iteration at a time, as the original runs it: compiled
    pieces per iteration (replacement + loss/gradient, update) and the constraint decision read back to the host.
    Returns fn(variables, images, chunks, noise, valid) -> the same dictionary as `protect`."""
    check_config(config)
    start = jax.jit(lambda variables, images, valid: _start(functools.partial(apply_fn, variables), config, images,
                                                            valid))

    @jax.jit
    def replace_and_gradient(variables, reference, valid, x, noise, chunks, step, replace):
        x = _replace(x, noise, chunks, step, replace, config)
        return (x, *_loss_and_grad_fn(functools.partial(apply_fn, variables), config, reference, valid)(x))

    update = jax.jit(functools.partial(_update, config))

    def fn(variables, images, chunks, noise, valid=None):
        images = jnp.asarray(images, jnp.float32)
        valid = jnp.ones(images.shape[0], bool) if valid is None else jnp.asarray(valid, bool)
        reference, bounds = start(variables, images, valid)
        x, momentum = images, jnp.zeros_like(images)
        condition = np.ones(_decision_shape(config, images.shape[0]), bool)
        replacements = np.zeros(images.shape[0], np.int64)
        for step in range(config.max_iter):
            replace = np.logical_or(step < config.warmup_iter, condition)
            x, per_image, decision, features, grad = replace_and_gradient(
                variables, reference, valid, x, noise, chunks, jnp.asarray(step), jnp.asarray(replace))
            condition = np.logical_and(np.asarray(decision) < config.epsilon,
                                       step < config.max_iter - config.repair_steps)
            x, momentum = update(bounds, x, momentum, grad, jnp.asarray(condition))
            replacements += np.broadcast_to(replace, replacements.shape)
        return {"images": x, "features": features, "loss": per_image, "replacements": jnp.asarray(replacements)}

    return fn


def protect_python_loop(feature_fn: Callable, images, chunks, noise, config, valid=None) -> dict:
    """`make_python_loop_fn` for a feature function of the images alone (compiled afresh on every call)."""
    return make_python_loop_fn(lambda _, x: feature_fn(x), config)(None, images, chunks, noise, valid)


def make_protect_fn(apply_fn: Callable, config) -> Callable:
    """jit(fn(variables, images, chunks, noise, valid) -> protect(...)) for a model `apply_fn(variables, x)` that
    returns (B, D) features (for AGW: functools.partial(net.apply, train=False))."""
    check_config(config)

    @jax.jit
    def fn(variables, images, chunks, noise, valid):
        return protect(functools.partial(apply_fn, variables), images, chunks, noise, config, valid)

    return fn


def protection_keys(seed: int, stream: int = 0):
    """(chunks key, noise key) of a protection run: the replacement chunks from fold_in(key(seed), 0), the noise
    targets of image stream `stream` (e.g. test / train images) from fold_in(key(seed), 1 + stream)."""
    key = jax.random.key(seed)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1 + stream)


def protect_padded(protect_fn: Callable, variables, images, *, start: int, chunks, noise_key) -> dict:
    """`protect_fn` (from make_protect_fn) on up to chunks.shape[0] normalised images whose global indices start at
    `start`, padded to that batch size (one compiled shape; padded rows are marked invalid) and trimmed back;
    returns host arrays."""
    batch_size, real = chunks.shape[0], len(images)
    padded = np.zeros((batch_size, *chunks.shape[1:]), np.float32)
    padded[:real] = np.asarray(images)
    noise = noise_images(noise_key, jnp.arange(start, start + batch_size), chunks.shape[1:])
    valid = np.arange(batch_size) < real
    out = jax.device_get(protect_fn(variables, jnp.asarray(padded), chunks, noise, jnp.asarray(valid)))
    return {kind: values[:real] for kind, values in out.items()}
