"""Shared layers against XLA's own operations and PyTorch: the stride-1 max-pool (values and tie-breaking
gradients, bit for bit) and the patch-product convolution (values and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from anon_jax.models import layers


@pytest.mark.parametrize("seed", [0, 1])
def test_max_pool_2x2_stride1_matches_torch_and_xla_on_ties(seed):
    # Small integers: most windows hold ties, where the gradient must go to the first maximum in row-major order.
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, size=(2, 7, 6, 3)).astype(np.float32)
    weights = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    pooled, gradient = jax.value_and_grad(lambda v: jnp.sum(layers.max_pool_2x2_stride1(v) * weights))(x)
    xla_pooled, xla_gradient = jax.value_and_grad(
        lambda v: jnp.sum(nn.max_pool(v, (2, 2), strides=(1, 1), padding="VALID") * weights))(x)
    np.testing.assert_array_equal(np.asarray(gradient), np.asarray(xla_gradient))
    torch_x = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
    torch_pooled = torch.nn.functional.max_pool2d(torch_x, 2, stride=1)
    (torch_pooled * torch.from_numpy(weights).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_array_equal(np.asarray(pooled), np.asarray(xla_pooled))
    np.testing.assert_array_equal(np.asarray(gradient), torch_x.grad.permute(0, 2, 3, 1).numpy())


def xla_conv(lhs, rhs, strides, padding, **kwargs):
    return jax.lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        **kwargs)


@pytest.mark.parametrize("kernel, strides, padding", [
    ((3, 3), (1, 1), ((1, 1), (1, 1))),
    ((7, 7), (2, 2), ((3, 3), (3, 3))),
    ((5, 3), (2, 1), ((2, 1), (0, 3))),
    ((3, 3), (1, 2), "SAME"),
    ((1, 1), (1, 1), "VALID"),
])
def test_patch_conv_matches_xla_values_and_gradients(kernel, strides, padding):
    rng = np.random.default_rng(0)
    lhs = jnp.asarray(rng.normal(size=(2, 11, 9, 5)), jnp.float32)
    rhs = jnp.asarray(rng.normal(size=kernel + (5, 7)), jnp.float32)
    dimension_numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(conv, lhs, rhs):
        return jnp.sum(jnp.sin(conv(lhs, rhs, strides, padding)))

    ours = jax.jit(lambda a, b: layers.patch_conv(a, b, strides, padding, dimension_numbers=dimension_numbers))
    np.testing.assert_allclose(ours(lhs, rhs), xla_conv(lhs, rhs, strides, padding), rtol=1e-5, atol=1e-5)
    patch_grads = jax.grad(lambda a, b: loss(lambda *args: layers.patch_conv(
        *args, dimension_numbers=dimension_numbers), a, b), argnums=(0, 1))(lhs, rhs)
    xla_grads = jax.grad(lambda a, b: loss(xla_conv, a, b), argnums=(0, 1))(lhs, rhs)
    for ours_grad, xla_grad in zip(patch_grads, xla_grads):
        np.testing.assert_allclose(ours_grad, xla_grad, rtol=1e-4, atol=1e-4)


def test_patch_conv_in_flax_conv_and_fallbacks():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 8, 6, 4)), jnp.float32)
    plain = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)))
    patched = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=layers.patch_conv)
    variables = plain.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(patched.apply(variables, x), plain.apply(variables, x), rtol=1e-5, atol=1e-5)
    # Dilated and grouped convolutions are XLA's own.
    for module in (nn.Conv(6, (3, 3), kernel_dilation=2, padding="SAME"),
                   nn.Conv(6, (3, 3), feature_group_count=2, padding="SAME")):
        variables = module.init(jax.random.PRNGKey(0), x)
        patched = module.clone(conv_general_dilated=layers.patch_conv)
        np.testing.assert_array_equal(patched.apply(variables, x), module.apply(variables, x))


@pytest.mark.parametrize("shape, use_bias", [((2, 3, 5, 6), True), ((1, 8, 4, 3), False)])
def test_conv_transpose_x2_matches_flax_and_torch(shape, use_bias):
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    ours = layers.ConvTransposeX2(4, use_bias=use_bias, bias_init=nn.initializers.normal(1.0))
    flax_module = nn.ConvTranspose(4, (5, 5), strides=(2, 2), padding=((2, 3), (2, 3)), transpose_kernel=True,
                                   use_bias=use_bias, bias_init=nn.initializers.normal(1.0))
    variables = ours.init(jax.random.PRNGKey(3), x)
    flax_variables = flax_module.init(jax.random.PRNGKey(3), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, variables, flax_variables)  # same names, shapes, init
    out = ours.apply(variables, x)
    assert out.shape == (shape[0], 2 * shape[1], 2 * shape[2], 4)
    np.testing.assert_allclose(out, flax_module.apply(variables, x), rtol=1e-5, atol=1e-5)
    params = variables["params"]
    weight = torch.from_numpy(np.asarray(params["kernel"]).transpose(3, 2, 0, 1).copy())
    bias = torch.from_numpy(np.asarray(params["bias"])) if use_bias else None
    torch_out = torch.nn.functional.conv_transpose2d(torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2), weight,
                                                     bias, stride=2, padding=2, output_padding=1)
    np.testing.assert_allclose(out, torch_out.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    # Gradients with respect to the input and the kernel as the dilated convolution's.
    def loss(module, variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x)))
    ours_grads = jax.grad(lambda v, x: loss(ours, v, x), argnums=(0, 1))(variables, x)
    flax_grads = jax.grad(lambda v, x: loss(flax_module, v, x), argnums=(0, 1))(variables, x)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), ours_grads, flax_grads)


@pytest.mark.parametrize("shape, taps, stride, padding", [
    ((2, 9, 7, 3), 3, 1, ((1, 1), (1, 1))), ((2, 9, 7, 3), 3, 2, ((1, 1), (1, 1))),
    ((2, 10, 8, 4), 7, 2, ((3, 3), (3, 3))), ((2, 10, 8, 4), 1, 2, ((0, 0), (0, 0))),
    ((2, 11, 8, 4), 4, 2, ((1, 2), (0, 1))), ((2, 6, 5, 3), 3, 1, "SAME")])
def test_loop_friendly_conv_values_and_gradients_are_xla_convolution(shape, taps, stride, padding):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(taps, taps, shape[-1], 5)), jnp.float32)

    def loss(conv):
        return lambda x, k: jnp.sum(jnp.sin(conv(x, k, (stride, stride), padding,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))))

    expected = jax.value_and_grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, kernel)
    got = jax.value_and_grad(loss(layers.loop_friendly_conv), (0, 1))(x, kernel)
    for want, have in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)


def test_loop_friendly_conv_hands_dilated_convolutions_to_xla():
    x = jnp.ones((1, 6, 6, 2))
    kernel = jnp.ones((3, 3, 2, 1))
    got = layers.loop_friendly_conv(x, kernel, (1, 1), "VALID", rhs_dilation=(2, 2),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert got.shape == (1, 2, 2, 1) and float(got[0, 0, 0, 0]) == 18.0
