"""pix2pix tests: U-Net and PatchGAN shapes, parameter counts (hand-computed and module by module against a PyTorch
twin written from the reference facts), forward and gradient parity with the twin in train and eval mode, the
N(0, 0.02) init, dropout placement, the 4x4 transposed conv, gan_loss against BCEWithLogits, and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import flax.linen as nn
from flax import traverse_util
from torch import nn as tnn

from anon_jax.models import pix2pix

TOLERANCE = 2e-5


# ---------------------------------------------------------------------------------------------- PyTorch twin
class TorchUNetBlock(tnn.Module):
    """One pix2pix skip-connection level: x -> [x, up(sub(down(x)))] (outermost: up(sub(down(x))) only).

    Activations are in place as in the original, so the skipped map becomes LeakyReLU(x) before concatenation.
    `parts` (a plain dict, not registered) names the layers for the weight conversion.
    """

    def __init__(self, outer, inner, in_channels=None, sub=None, outermost=False, innermost=False, dropout=False):
        super().__init__()
        down = tnn.Conv2d(outer if in_channels is None else in_channels, inner, 4, 2, 1, bias=False)
        self.outermost = outermost
        self.parts = {"down": down, "sub": sub}
        if outermost:
            up = tnn.ConvTranspose2d(2 * inner, outer, 4, 2, 1)
            layers = [down, sub, tnn.ReLU(True), up, tnn.Tanh()]
        elif innermost:
            up, up_norm = tnn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), tnn.BatchNorm2d(outer)
            layers = [tnn.LeakyReLU(0.2, True), down, tnn.ReLU(True), up, up_norm]
            self.parts["up_norm"] = up_norm
        else:
            down_norm = tnn.BatchNorm2d(inner)
            up, up_norm = tnn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=False), tnn.BatchNorm2d(outer)
            layers = [tnn.LeakyReLU(0.2, True), down, down_norm, sub, tnn.ReLU(True), up, up_norm]
            layers += [tnn.Dropout(0.5)] if dropout else []
            self.parts.update(down_norm=down_norm, up_norm=up_norm)
        self.parts["up"] = up
        self.model = tnn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


def torch_unet(num_downs, ngf, in_channels=3, out_channels=3, dropout=False):
    """pix2pix UnetGenerator, built from the innermost level outwards."""
    block = TorchUNetBlock(8 * ngf, 8 * ngf, innermost=True)
    for _ in range(num_downs - 5):
        block = TorchUNetBlock(8 * ngf, 8 * ngf, sub=block, dropout=dropout)
    for multiple in (4, 2, 1):
        block = TorchUNetBlock(multiple * ngf, 2 * multiple * ngf, sub=block)
    return TorchUNetBlock(out_channels, ngf, in_channels, sub=block, outermost=True)


def torch_patch_discriminator(in_channels, ndf, n_layers=3):
    """pix2pix NLayerDiscriminator as a Sequential; returns (model, [(flax name, module), ...])."""
    convs = [tnn.Conv2d(in_channels, ndf, 4, 2, 1)]
    layers, names = [convs[0], tnn.LeakyReLU(0.2, True)], [("conv_0", convs[0])]
    previous = ndf
    for layer in range(1, n_layers + 1):
        width = ndf * min(2**layer, 8)
        conv = tnn.Conv2d(previous, width, 4, 2 if layer < n_layers else 1, 1, bias=False)
        norm = tnn.BatchNorm2d(width)
        layers += [conv, norm, tnn.LeakyReLU(0.2, True)]
        names += [(f"conv_{layer}", conv), (f"norm_{layer}", norm)]
        previous = width
    last = tnn.Conv2d(previous, 1, 4, 1, 1)
    names.append((f"conv_{n_layers + 1}", last))
    return tnn.Sequential(*layers, last), names


def unet_modules(model):
    """[(flax name, torch module)] level by level, outermost first."""
    named, block, level = [], model, 0
    while block is not None:
        parts = block.parts
        named += [(f"down_{level}", parts["down"]), (f"up_{level}", parts["up"])]
        named += [(f"{key}_{level}", parts[key]) for key in ("down_norm", "up_norm") if key in parts]
        block, level = parts["sub"], level + 1
    return named


def to_flax_variables(named_modules):
    """Conv / ConvTranspose weights (both transposed by (2, 3, 1, 0)) and BatchNorm state as Flax variables."""
    flat = {}
    for name, module in named_modules:
        if isinstance(module, tnn.BatchNorm2d):
            flat[("params", name, "scale")] = module.weight
            flat[("params", name, "bias")] = module.bias
            flat[("batch_stats", name, "mean")] = module.running_mean
            flat[("batch_stats", name, "var")] = module.running_var
        else:
            flat[("params", name, "kernel")] = module.weight.permute(2, 3, 1, 0)
            if module.bias is not None:
                flat[("params", name, "bias")] = module.bias
    return traverse_util.unflatten_dict({key: jnp.asarray(value.detach().numpy()) for key, value in flat.items()})


def randomise_batch_norms(model, seed):
    """Non-trivial BN affine parameters and running statistics, so eval mode is really tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, tnn.BatchNorm2d):
                size = module.num_features
                module.weight.copy_(1 + 0.3 * torch.randn(size, generator=generator))
                module.bias.copy_(0.3 * torch.randn(size, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))


def nchw(array):
    return torch.from_numpy(np.asarray(array).transpose(0, 3, 1, 2).copy())


def nhwc(tensor):
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def max_difference(tree_a, tree_b):
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree_util.tree_leaves(tree_a), jax.tree_util.tree_leaves(tree_b)))


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_init(module, shape):
    return jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False),
                          jax.ShapeDtypeStruct(shape, jnp.float32))


def leaf_shapes(tree):
    return {key: tuple(value.shape) for key, value in traverse_util.flatten_dict(dict(tree)).items()}


# ---------------------------------------------------------------------------------------------- shapes, counts
def test_unet_128_on_reid_crops_has_a_2x1x512_bottleneck_and_tanh_output_shape():
    generator = pix2pix.UNetGenerator()

    def run(images):
        variables = generator.init(jax.random.PRNGKey(0), images, train=False)
        return generator.apply(variables, images, train=False, capture_intermediates=lambda m, _: m.name == "down_6")

    output, state = jax.eval_shape(run, jax.ShapeDtypeStruct((2, 256, 128, 3), jnp.float32))
    assert output.shape == (2, 256, 128, 3) and output.dtype == jnp.float32
    assert state["intermediates"]["down_6"]["__call__"][0].shape == (2, 2, 1, 512)


def test_patch_discriminator_gives_30x14_logits_for_256x128_pairs():
    discriminator = pix2pix.PatchDiscriminator()
    variables = abstract_init(discriminator, (2, 256, 128, 6))
    logits = jax.eval_shape(lambda v, x: discriminator.apply(v, x, train=False), variables,
                            jax.ShapeDtypeStruct((2, 256, 128, 6), jnp.float32))
    assert logits.shape == (2, 30, 14, 1)


def test_parameter_counts_match_hand_counts_and_the_torch_twin_module_by_module():
    generator = abstract_init(pix2pix.UNetGenerator(), (1, 128, 128, 3))
    discriminator = abstract_init(pix2pix.PatchDiscriminator(), (1, 64, 64, 6))
    # Hand counts: U-Net levels (down conv, down BN, transposed conv, up BN) and the five PatchGAN convs + 3 BNs.
    levels = [3 * 64 * 16 + 128 * 3 * 16 + 3,
              64 * 128 * 16 + 2 * 128 + 256 * 64 * 16 + 2 * 64,
              128 * 256 * 16 + 2 * 256 + 512 * 128 * 16 + 2 * 128,
              256 * 512 * 16 + 2 * 512 + 1024 * 256 * 16 + 2 * 256]
    levels += 2 * [512 * 512 * 16 + 2 * 512 + 1024 * 512 * 16 + 2 * 512]
    levels += [512 * 512 * 16 + 512 * 512 * 16 + 2 * 512]
    assert count(generator["params"]) == sum(levels) == 41_828_995
    assert count(discriminator["params"]) == (6 * 64 * 16 + 64) + (64 * 128 * 16 + 256) + (128 * 256 * 16 + 512) \
        + (256 * 512 * 16 + 1024) + (512 * 16 + 1) == 2_768_705

    torch_generator = torch_unet(7, 64)
    torch_discriminator, discriminator_modules = torch_patch_discriminator(6, 64)
    assert sum(p.numel() for p in torch_generator.parameters()) == count(generator["params"])
    assert sum(p.numel() for p in torch_discriminator.parameters()) == count(discriminator["params"])
    assert leaf_shapes(to_flax_variables(unet_modules(torch_generator))) == leaf_shapes(generator)
    assert leaf_shapes(to_flax_variables(discriminator_modules)) == leaf_shapes(discriminator)


# ---------------------------------------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def unet_twins():
    """(Flax U-Net, torch U-Net, converted variables) at ngf=4 with dropout levels present (num_downs 7)."""
    torch.manual_seed(0)
    twin = torch_unet(7, 4, dropout=True)
    randomise_batch_norms(twin, seed=1)
    return pix2pix.UNetGenerator(num_downs=7, ngf=4, use_dropout=True), twin, to_flax_variables(unet_modules(twin))


def test_unet_eval_mode_matches_torch_on_256x128(unet_twins):
    module, twin, variables = unet_twins
    images = np.random.default_rng(0).normal(size=(2, 256, 128, 3)).astype(np.float32)
    twin.eval()
    with torch.no_grad():
        expected = nhwc(twin(nchw(images)))
    output = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images)
    assert 0.1 < float(np.std(expected)) and float(np.max(np.abs(expected))) < 1
    assert float(np.max(np.abs(np.asarray(output) - expected))) < TOLERANCE


def test_unet_train_mode_matches_torch_outputs_running_stats_and_gradients():
    torch.manual_seed(2)
    twin = torch_unet(5, 4, in_channels=6, out_channels=2)
    randomise_batch_norms(twin, seed=3)
    module = pix2pix.UNetGenerator(out_channels=2, num_downs=5, ngf=4)
    variables = to_flax_variables(unet_modules(twin))
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 64, 32, 6)).astype(np.float32)
    weights = rng.normal(size=(3, 64, 32, 2)).astype(np.float32)

    twin.train()
    torch_images = nchw(images).requires_grad_(True)
    torch_output = twin(torch_images)
    (torch_output * nchw(weights)).sum().backward()

    def loss(params, x):
        output, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                       mutable=["batch_stats"])
        return jnp.sum(output * weights), (output, updates)

    (_, (output, updates)), (param_grads, image_grads) = jax.jit(
        jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(variables["params"], images)
    assert float(np.max(np.abs(np.asarray(output) - nhwc(torch_output)))) < TOLERANCE
    converted = to_flax_variables(unet_modules(twin))
    assert max_difference(updates["batch_stats"], converted["batch_stats"]) < TOLERANCE
    assert float(np.max(np.abs(np.asarray(image_grads) - nhwc(torch_images.grad)))) < 1e-3
    named = dict(unet_modules(twin))
    torch_grads = traverse_util.unflatten_dict({
        key: jnp.asarray((named[key[0]].weight.grad.permute(2, 3, 1, 0) if key[1] == "kernel" else
                          named[key[0]].weight.grad if key[1] == "scale" else named[key[0]].bias.grad).numpy())
        for key in traverse_util.flatten_dict(param_grads)})
    assert jax.tree_util.tree_structure(torch_grads) == jax.tree_util.tree_structure(param_grads)
    scale = max(float(np.max(np.abs(leaf))) for leaf in jax.tree_util.tree_leaves(torch_grads))
    assert max_difference(param_grads, torch_grads) < 1e-5 * scale


@pytest.mark.parametrize("train", [False, True])
def test_patch_discriminator_matches_torch(train):
    torch.manual_seed(4)
    twin, named = torch_patch_discriminator(6, 8)
    randomise_batch_norms(twin, seed=5)
    variables = to_flax_variables(named)
    module = pix2pix.PatchDiscriminator(ndf=8)
    pairs = np.random.default_rng(2).normal(size=(2, 64, 32, 6)).astype(np.float32)
    twin.train(train)
    with torch.no_grad():
        expected = nhwc(twin(nchw(pairs)))
    if train:
        logits, updates = module.apply(variables, pairs, train=True, mutable=["batch_stats"])
        assert max_difference(updates["batch_stats"], to_flax_variables(named)["batch_stats"]) < TOLERANCE
    else:
        logits = module.apply(variables, pairs, train=False)
    assert logits.shape == expected.shape == (2, 6, 2, 1)
    assert float(np.max(np.abs(np.asarray(logits) - expected))) < TOLERANCE * max(1, float(np.max(np.abs(expected))))


def test_transposed_conv_matches_torch_and_flax_conv_transpose_on_odd_sizes():
    torch.manual_seed(6)
    layer = tnn.ConvTranspose2d(3, 5, 4, 2, 1)
    x = np.random.default_rng(3).normal(size=(2, 3, 7, 3)).astype(np.float32)
    with torch.no_grad():
        expected = nhwc(layer(nchw(x)))
    params = {"kernel": jnp.asarray(layer.weight.detach().permute(2, 3, 1, 0).numpy()),
              "bias": jnp.asarray(layer.bias.detach().numpy())}
    output = pix2pix.ConvTranspose4x4X2(5).apply({"params": params}, x)
    reference = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                                 transpose_kernel=True).apply({"params": params}, x)
    assert output.shape == expected.shape == (2, 6, 14, 5)
    assert float(np.max(np.abs(np.asarray(output) - expected))) < 1e-5
    assert float(np.max(np.abs(np.asarray(reference) - expected))) < 1e-5


# ---------------------------------------------------------------------------------------------- init, dropout
def test_init_is_pix2pix_normal():
    # rbg keys: the same initializers, but XLA compiles threefry for ~30 arrays 8x slower on CPU.
    init = lambda module, seed, shape: jax.jit(lambda k: module.init(k, jnp.zeros(shape), train=False))(
        jax.random.key(seed, impl="rbg"))
    generator = init(pix2pix.UNetGenerator(num_downs=5, ngf=8), 0, (1, 32, 32, 3))
    discriminator = init(pix2pix.PatchDiscriminator(ndf=16), 1, (1, 32, 32, 6))
    kernels, scales = [], []
    for variables in (generator, discriminator):
        for key, value in traverse_util.flatten_dict(variables).items():
            value = np.asarray(value)
            if key[-1] == "kernel":
                kernels.append(value.ravel())
                if value.size >= 20_000:
                    assert abs(value.std() - 0.02) < 0.002, key
            elif key[-1] == "scale":
                scales.append(value)
            elif key[-1] in ("bias", "mean"):
                assert not value.any(), key
            else:
                assert key[-1] == "var" and (value == 1).all(), key
    kernels, scales = np.concatenate(kernels), np.concatenate(scales)
    assert kernels.size > 400_000 and abs(kernels.mean()) < 1.5e-4 and abs(kernels.std() - 0.02) < 2e-4
    assert scales.size > 400 and abs(scales.mean() - 1) < 0.003 and abs(scales.std() - 0.02) < 0.003


def test_dropout_acts_only_in_training_on_the_extra_8ngf_levels():
    def dropout_levels(num_downs):
        module = pix2pix.UNetGenerator(num_downs=num_downs, ngf=2, use_dropout=True)

        def run(images):
            variables = module.init(jax.random.PRNGKey(0), images, train=False)
            return module.apply(variables, images, train=True, mutable=["batch_stats", "intermediates"],
                                rngs={"dropout": jax.random.PRNGKey(1)},
                                capture_intermediates=lambda m, _: isinstance(m, nn.Dropout))

        _, state = jax.eval_shape(run, jax.ShapeDtypeStruct((1, 2**num_downs, 2**num_downs, 3), jnp.float32))
        return sorted(state.get("intermediates", {}))

    assert dropout_levels(5) == [] and dropout_levels(6) == ["dropout_4"]
    assert dropout_levels(8) == ["dropout_4", "dropout_5", "dropout_6"]

    plain = pix2pix.UNetGenerator(num_downs=6, ngf=2)
    dropped = plain.clone(use_dropout=True)
    images = jnp.asarray(np.random.default_rng(4).normal(size=(2, 64, 64, 3)), jnp.float32)

    @jax.jit
    def outputs(key):
        variables = plain.init(key, images, train=False)
        train = lambda module, seed: module.apply(variables, images, train=True, mutable=["batch_stats"],
                                                  rngs={"dropout": jax.random.fold_in(key, seed)})[0]
        return (plain.apply(variables, images, train=False), dropped.apply(variables, images, train=False),
                train(plain, 1), train(dropped, 1), train(dropped, 2))

    # rbg keys compile much faster on CPU than threefry (see test_init_is_pix2pix_normal).
    plain_eval, dropped_eval, plain_train, first, second = outputs(jax.random.key(0, impl="rbg"))
    assert jnp.array_equal(dropped_eval, plain_eval)
    assert bool(jnp.any(first != second)) and bool(jnp.any(first != plain_train))


# ---------------------------------------------------------------------------------------------- loss, errors
def test_gan_loss_matches_bce_with_logits_and_stays_finite():
    logits = np.concatenate([np.random.default_rng(5).normal(scale=4, size=27),
                             [-1e4, -50.0, 0.0, 50.0, 1e4]]).astype(np.float32).reshape(2, 4, 4, 1)
    bce = tnn.BCEWithLogitsLoss()
    for real in (True, False):
        target = torch.full(logits.shape, 1.0 if real else 0.0)
        expected = float(bce(torch.from_numpy(logits), target))
        assert abs(float(pix2pix.gan_loss(logits, real)) - expected) < 1e-5 * expected
        assert abs(float(jax.jit(pix2pix.gan_loss)(logits, jnp.asarray(real))) - expected) < 1e-5 * expected
    assert float(pix2pix.gan_loss(jnp.zeros((3, 3, 1)), True)) == pytest.approx(np.log(2))
    assert float(pix2pix.gan_loss(jnp.asarray([1e4, -1e4]), True)) == pytest.approx(5e3)
    assert float(pix2pix.gan_loss(jnp.asarray([1e4]), False)) == pytest.approx(1e4)


def test_bad_shapes_and_settings_raise_clear_errors():
    with pytest.raises(pix2pix.Pix2PixInputError, match="divisible by 256.*256x128"):
        abstract_init(pix2pix.UNetGenerator(num_downs=8), (1, 256, 128, 3))
    with pytest.raises(pix2pix.Pix2PixInputError, match="divisible by 32.*100x64"):
        abstract_init(pix2pix.UNetGenerator(num_downs=5), (1, 100, 64, 3))
    with pytest.raises(pix2pix.Pix2PixInputError, match="NHWC"):
        abstract_init(pix2pix.UNetGenerator(), (128, 128, 3))
    with pytest.raises(pix2pix.Pix2PixConfigError, match="at least 5"):
        abstract_init(pix2pix.UNetGenerator(num_downs=4), (1, 64, 64, 3))
    with pytest.raises(pix2pix.Pix2PixConfigError, match="ngf=0"):
        abstract_init(pix2pix.UNetGenerator(ngf=0), (1, 128, 128, 3))
    with pytest.raises(pix2pix.Pix2PixInputError, match="at least 24, got 64x16"):
        abstract_init(pix2pix.PatchDiscriminator(), (1, 64, 16, 6))
    assert issubclass(pix2pix.Pix2PixInputError, ValueError) and issubclass(pix2pix.Pix2PixConfigError, ValueError)
