"""AnonyNoise networks: golden parameter counts, parity with PyTorch twins written after the reference notes
(anonymizer with injected noise, ClassNet in eval and train mode, DenoiseNet), the noise stream, the PyTorch
initialisations and the import of torchvision ResNet weights with the cyclic 10-channel stem."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from torch import nn as tnn

from anon_jax.convert import torchvision_resnet
from anon_jax.methods import anonynoise as anonynoise_method
from anon_jax.models import anonynoise, reid
from benchmarks.torch_models import (TORCH_STAGE_BLOCKS, TorchResNet, load_flax_variables, to_nchw, to_nhwc,
                                      torch_to_flax_array)
from configs import anonynoise as anonynoise_config

CHANNELS = 10


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _frames(shape, seed):
    """Event-count-like frames: small non-negative integers, mostly zero."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.poisson(0.7, shape), jnp.float32)


def _randomize_batch_norms(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


# ---------------------------------------------------------------- parameter counts (hand-computed)
def test_parameter_counts():
    def counts(module, shape, **kwargs):
        variables = jax.eval_shape(lambda: module.init(
            {"params": jax.random.key(0), "noise": jax.random.key(1)}, jnp.zeros(shape), **kwargs))
        return variables

    # Anonymizer: 3x3 convs with bias 20->64->128->256->128->64->10 (or ->20 with the mean branch).
    widths = (20, 64, 128, 256, 128, 64)
    body = sum(9 * a * b + b for a, b in zip(widths, widths[1:]))
    assert body + 9 * 64 * 10 + 10 == 755_210
    assert _count(counts(anonynoise.NoiseAnonymizer(), (1, 8, 8, 10))) == 755_210
    assert _count(counts(anonynoise.NoiseAnonymizer(variant="mean_and_scaled_noise"), (1, 8, 8, 10))) == \
        body + 9 * 64 * 20 + 20 == 760_980
    narrow = counts(anonynoise.NoiseAnonymizer(features=(4, 8, 8, 8, 4)), (1, 8, 8, 10))
    assert _count(narrow) == (9 * 20 * 4 + 4) + (9 * 4 * 8 + 8) + 2 * (9 * 8 * 8 + 8) + (9 * 8 * 4 + 4) + \
        (9 * 4 * 10 + 10)

    # DenoiseNet: conv 10->128, 13 x (conv 128->128 with bias + BN scale/bias), conv 128->10.
    denoise = counts(anonynoise.DenoiseNet(), (1, 8, 8, 10), train=False)
    assert _count(denoise["params"]) == (9 * 10 * 128 + 128) + 13 * (9 * 128 * 128 + 128 + 2 * 128) + \
        (9 * 128 * 10 + 10) == 1_945_098
    assert _count(denoise["batch_stats"]) == 13 * 2 * 128

    # ClassNet: torchvision ResNet-50 trunk (23,508,032 with 3 input channels) with a 10-channel conv1, then
    # Linear(2048, 512), BN1d(512), Linear(512, 22).
    classnet = counts(anonynoise.ClassNet(22), (2, 64, 32, 10), train=False)
    assert _count(classnet["params"]["backbone"]) == 23_508_032 + 64 * 7 * 7 * (10 - 3) == 23_529_984
    assert _count(classnet["params"]["head"]) == (2048 * 512 + 512) + 2 * 512 + (512 * 22 + 22) == 1_061_398
    assert set(classnet["params"]) == {"backbone", "head"}


# ---------------------------------------------------------------- anonymizer
class TorchNoiseAnonymizer(tnn.Module):
    """SimpleAnonNet as described in the notes, taking its noise sample as an argument."""

    def __init__(self, channels, mean_branch):
        super().__init__()
        widths = (2 * channels, 64, 128, 256, 128, 64, channels * (2 if mean_branch else 1))
        self.convs = tnn.ModuleList(tnn.Conv2d(a, b, 3, 1, 1) for a, b in zip(widths, widths[1:]))
        self.mean_branch = mean_branch

    def forward(self, x, noise):
        h = torch.cat([x, noise], 1)
        for index, conv in enumerate(self.convs):
            h = conv(h)
            if index < len(self.convs) - 1:
                h = torch.relu(h)
        if not self.mean_branch:
            return x + h * noise
        mean, scale = h.chunk(2, 1)
        return x + mean + noise * scale


def _anonymizer_params_from_torch(model):
    return {f"conv{index + 1}": {"kernel": torch_to_flax_array(conv.weight), "bias": torch_to_flax_array(conv.bias)}
            for index, conv in enumerate(model.convs)}


@pytest.mark.parametrize("variant", anonynoise.NOISE_VARIANTS)
def test_anonymizer_matches_torch_with_injected_noise(variant):
    torch.manual_seed(1)
    model = TorchNoiseAnonymizer(CHANNELS, mean_branch=variant == "mean_and_scaled_noise")
    params = _anonymizer_params_from_torch(model)
    frames = _frames((2, 12, 10, CHANNELS), seed=2)
    unit_noise = jnp.asarray(np.random.default_rng(3).standard_normal(frames.shape), jnp.float32)
    noise_std = 1.5
    ours = anonynoise.NoiseAnonymizer(CHANNELS, variant=variant, noise_std=noise_std).apply(
        {"params": params}, frames, unit_noise=unit_noise)
    with torch.no_grad():
        theirs = to_nhwc(model(to_nchw(frames), to_nchw(noise_std * unit_noise)))
    assert ours.dtype == jnp.float32
    assert float(np.max(np.abs(np.asarray(ours) - np.asarray(frames)))) > 0.1  # the noise does something
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def anonymizer_params():
    # Compiled: op-by-op initialisation costs seconds on CPU.
    init = jax.jit(anonynoise.NoiseAnonymizer(CHANNELS).init)
    return init({"params": jax.random.key(0), "noise": jax.random.key(1)}, jnp.zeros((1, 8, 8, CHANNELS)))["params"]


def test_anonymizer_init_is_pytorch_default(anonymizer_params):
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernel and bias, fan_in = 9 * 20 for the first conv.
    bound = 1.0 / np.sqrt(9 * 20)
    kernel, bias = anonymizer_params["conv1"]["kernel"], anonymizer_params["conv1"]["bias"]
    assert kernel.shape == (3, 3, 20, 64) and bias.shape == (64,)
    assert np.max(np.abs(kernel)) <= bound and np.max(np.abs(kernel)) > 0.99 * bound
    np.testing.assert_allclose(np.std(kernel), bound / np.sqrt(3), rtol=0.05)
    assert np.max(np.abs(bias)) <= bound and np.std(bias) > 0.4 * bound


def test_anonymizer_draws_fresh_noise_from_the_noise_rng(anonymizer_params):
    module = anonynoise.NoiseAnonymizer(CHANNELS)
    apply = jax.jit(lambda key, frames: module.apply({"params": anonymizer_params}, frames, rngs={"noise": key}))
    frames = _frames((2, 8, 8, CHANNELS), seed=4)
    first, again = apply(jax.random.key(5), frames), apply(jax.random.key(5), frames)
    other = apply(jax.random.key(6), frames)
    np.testing.assert_array_equal(first, again)
    assert np.mean(np.asarray(first) != np.asarray(other)) > 0.99


@pytest.mark.parametrize("variant, offset", [("scaled_noise", 0.0), ("mean_and_scaled_noise", 0.5)])
def test_anonymizer_noise_is_noise_std_times_standard_normal(anonymizer_params, variant, offset):
    # With the last conv giving S = 1 (and mu = offset) everywhere, output - x - mu is the noise draw itself.
    module = anonynoise.NoiseAnonymizer(CHANNELS, variant=variant, noise_std=2.0)
    params = dict(anonymizer_params)
    out_features = CHANNELS * (2 if offset else 1)
    params["conv6"] = {"kernel": jnp.zeros((3, 3, 64, out_features)),
                       "bias": jnp.concatenate([jnp.full((CHANNELS,), offset), jnp.ones((CHANNELS,))])[-out_features:]}
    frames = _frames((4, 16, 16, CHANNELS), seed=7)
    anonymized = jax.jit(module.apply)({"params": params}, frames, rngs={"noise": jax.random.key(8)})
    noise = np.asarray(anonymized - frames - offset)
    assert abs(np.mean(noise)) < 0.1  # 10240 draws of N(0, 4): the mean's std is 0.02
    np.testing.assert_allclose(np.std(noise), 2.0, rtol=0.05)


def test_zero_noise_returns_the_input_exactly(anonymizer_params):
    frames = _frames((2, 8, 8, CHANNELS), seed=9) - 0.5
    for dtype in (jnp.float32, jnp.bfloat16):
        out = anonynoise.NoiseAnonymizer(CHANNELS, noise_std=0.0, dtype=dtype).apply(
            {"params": anonymizer_params}, frames)  # no "noise" rng needed
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(out, frames)


def test_zero_noise_in_the_mean_variant_adds_the_mean_map():
    module = anonynoise.NoiseAnonymizer(CHANNELS, variant="mean_and_scaled_noise", noise_std=0.0)
    frames = _frames((1, 8, 8, CHANNELS), seed=10)
    params = jax.jit(module.init)(jax.random.key(11), frames)["params"]
    out = module.apply({"params": params}, frames)
    noisy_module = anonynoise.NoiseAnonymizer(CHANNELS, variant="mean_and_scaled_noise", noise_std=1.0)
    zero_draw = noisy_module.apply({"params": params}, frames, unit_noise=jnp.zeros_like(frames))
    np.testing.assert_array_equal(out, zero_draw)
    assert float(np.max(np.abs(np.asarray(out - frames)))) > 1e-3


def test_bad_settings_and_inputs_are_named():
    frames = jnp.zeros((1, 8, 8, CHANNELS))
    keys = {"params": jax.random.key(0), "noise": jax.random.key(1)}
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match=r"\(batch, height, width, 4\)"):
        anonynoise.NoiseAnonymizer(4).init(keys, frames)
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match="variant='mean'"):
        anonynoise.NoiseAnonymizer(CHANNELS, variant="mean").init(keys, frames)
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match="noise_std=-1.0"):
        anonynoise.NoiseAnonymizer(CHANNELS, noise_std=-1.0).init(keys, frames)
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match=r"features=\(8, 8\) must be five"):
        anonynoise.NoiseAnonymizer(CHANNELS, features=(8, 8)).init(keys, frames)
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match="unit_noise has shape"):
        anonynoise.NoiseAnonymizer(CHANNELS).init(keys, frames, unit_noise=jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match=r"dropout=1\.0"):
        anonynoise.ClassNet(3, dropout=1.0).init(keys, frames, train=False)
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match="num_classes=0"):
        anonynoise.ClassNet(0).init(keys, frames, train=False)
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match="num_layers=1"):
        anonynoise.DenoiseNet(num_layers=1).init(keys, frames, train=False)
    with pytest.raises(anonynoise.AnonyNoiseNetworkError, match=r"\(batch, height, width, 10\)"):
        anonynoise.DenoiseNet().init(keys, jnp.zeros((8, 8, CHANNELS)), train=False)


# ---------------------------------------------------------------- ClassNet
CLASSNET = anonynoise.ClassNet(7, depth=18, width=8, embed_dim=32)
CLASSNET_INPUT = (4, 64, 32, CHANNELS)
classnet_eval = jax.jit(lambda variables, frames: CLASSNET.apply(variables, frames, train=False))
classnet_train = jax.jit(lambda variables, frames, key: CLASSNET.apply(
    variables, frames, train=True, rngs={"dropout": key}, mutable=["batch_stats"]))


class TorchClassNet(tnn.Module):
    """AnonyNoise's ClassNet (ResNet trunk, Linear-BN1d-LeakyReLU(0.5)-Dropout, Linear). In training it drops the
    units given by `keep` (the Flax run's mask) instead of drawing its own."""

    def __init__(self, num_classes, in_channels, depth, width, embed_dim, dropout=0.5):
        super().__init__()
        blocks, block = TORCH_STAGE_BLOCKS[depth]
        self.backbone = TorchResNet(blocks, block, in_channels=in_channels, last_stride=2, width=width)
        features = 8 * width * block.expansion
        self.linear_block = tnn.Sequential(tnn.Linear(features, embed_dim), tnn.BatchNorm1d(embed_dim),
                                           tnn.LeakyReLU(0.5))
        self.classifier = tnn.Linear(embed_dim, num_classes)
        self.dropout = dropout

    def forward(self, x, keep=None):
        pool5 = self.backbone(x)
        embed = self.linear_block(pool5)
        if self.training:
            embed = embed * keep / (1 - self.dropout)
        return {"logits": self.classifier(embed), "embed": embed, "pool5": pool5}


_HEAD_KEYS = {"embed_dense": "linear_block.0", "embed_bn": "linear_block.1", "logits_dense": "classifier"}
_HEAD_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def classnet_torch_key(collection, path):
    scope, *inner = path
    if scope == "backbone":
        return "backbone." + torchvision_resnet.torch_key(collection, inner)
    return f"{_HEAD_KEYS[inner[0]]}.{_HEAD_LEAVES[inner[1]]}"


def _random_variables(abstract, seed):
    """Random weights and running statistics of order-one activations (NumPy, no init compile)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("var", "scale"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        if name == "kernel":
            return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.fixture(scope="module")
def classnet_pair():
    abstract = jax.eval_shape(lambda: CLASSNET.init(jax.random.key(0), jnp.zeros(CLASSNET_INPUT), train=False))
    variables = _random_variables(abstract, seed=12)
    model = load_flax_variables(TorchClassNet(7, CHANNELS, depth=18, width=8, embed_dim=32), variables,
                                classnet_torch_key)
    return variables, model


def test_classnet_matches_torch_in_eval_mode(classnet_pair):
    variables, model = classnet_pair
    frames = _frames(CLASSNET_INPUT, seed=13)
    outputs = classnet_eval(variables, frames)
    with torch.no_grad():
        expected = model.eval()(to_nchw(frames))
    for name in ("pool5", "embed", "logits"):
        assert outputs[name].dtype == jnp.float32
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=name)


def test_classnet_matches_torch_in_train_mode_with_dropout(classnet_pair):
    variables, model = classnet_pair
    frames = _frames(CLASSNET_INPUT, seed=14)
    outputs, updates = classnet_train(variables, frames, jax.random.key(15))
    keep = np.asarray(outputs["embed"]) != 0
    assert 0.3 < keep.mean() < 0.7  # dropout 0.5 is active in training
    with torch.no_grad():
        expected = model.train()(to_nchw(frames), torch.from_numpy(keep.astype(np.float32)))
    # Batch statistics of the last stage (4 x 2 x 1 values per channel) amplify float32 rounding.
    for name in ("pool5", "embed", "logits"):
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), atol=1e-3, rtol=1e-3, err_msg=name)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(stats["head"]["embed_bn"]["var"], model.linear_block[1].running_var.numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["backbone"]["bn1"]["mean"], model.backbone.bn1.running_mean.numpy(),
                               rtol=1e-5, atol=1e-6)
    # A fresh dropout key drops other units; eval mode drops none.
    other, _ = classnet_train(variables, frames, jax.random.key(16))
    assert np.any((np.asarray(other["embed"]) != 0) != keep)
    assert np.all(np.asarray(classnet_eval(variables, frames)["embed"]) != 0)


def test_classnet_head_init():
    # ClassNet's head is reid.ClassBlock; initialising it alone spares compiling the trunk's initialisers.
    head = reid.ClassBlock(7, 32, dropout=0.5)
    params = jax.jit(lambda key: head.init(key, jnp.zeros((2, 64)), train=False))(jax.random.key(17))["params"]
    abstract = jax.eval_shape(lambda: CLASSNET.init(jax.random.key(0), jnp.zeros(CLASSNET_INPUT), train=False))
    assert jax.tree_util.tree_map(jnp.shape, abstract["params"]["head"]) == jax.tree_util.tree_map(jnp.shape, params)
    # kaiming_normal fan_out (std sqrt(2 / 32)), BN weight N(1, 0.02), classifier N(0, 0.001), biases 0.
    np.testing.assert_allclose(np.std(params["embed_dense"]["kernel"]), np.sqrt(2 / 32), rtol=0.1)
    np.testing.assert_allclose(np.mean(params["embed_bn"]["scale"]), 1.0, atol=0.02)
    assert 0.005 < np.std(params["embed_bn"]["scale"]) < 0.04
    np.testing.assert_allclose(np.std(params["logits_dense"]["kernel"]), 0.001, rtol=0.35)
    for name in ("embed_dense", "embed_bn", "logits_dense"):
        np.testing.assert_array_equal(params[name]["bias"], 0.0)


# ---------------------------------------------------------------- DenoiseNet
def torch_denoise_net(channels, features, num_layers):
    layers = [tnn.Conv2d(channels, features, 3, padding=1), tnn.ReLU()]
    for _ in range(num_layers - 2):
        layers += [tnn.Conv2d(features, features, 3, padding=1), tnn.BatchNorm2d(features), tnn.ReLU()]
    layers.append(tnn.Conv2d(features, channels, 3, padding=1))
    return tnn.Sequential(*layers)


def denoise_torch_key(collection, path):
    name, leaf = path
    index = int(name.removeprefix("conv").removeprefix("bn"))
    # Sequential positions: conv0 at 0, then (conv, bn, relu) triples starting at 2; the last conv follows them.
    position = 0 if name == "conv0" else 3 * index - 1 + name.startswith("bn")
    return f"{position}.{_HEAD_LEAVES[leaf]}"


def test_denoise_net_matches_torch_in_eval_and_train_mode():
    network = anonynoise.DenoiseNet(CHANNELS, features=16, num_layers=5)
    frames = _frames((2, 12, 12, CHANNELS), seed=18)
    variables = jax.jit(lambda key: network.init(key, frames, train=False))(jax.random.key(19))
    variables["batch_stats"] = _random_variables(variables["batch_stats"], seed=20)
    variables["params"] = {**variables["params"],
                           **_random_variables({k: v for k, v in variables["params"].items() if k.startswith("bn")},
                                               seed=21)}
    model = load_flax_variables(torch_denoise_net(CHANNELS, 16, 5), variables, denoise_torch_key)
    assert denoise_torch_key("params", ("conv4", "kernel")) == "11.weight"
    with torch.no_grad():
        expected = to_nhwc(model.eval()(to_nchw(frames)))
    apply = jax.jit(lambda variables, train: network.apply(variables, frames, train=train,
                                                           mutable=["batch_stats"] if train else False),
                    static_argnums=1)
    outputs = apply(variables, False)
    assert outputs.dtype == jnp.float32
    np.testing.assert_allclose(outputs, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        expected = to_nhwc(model.train()(to_nchw(frames)))
    outputs, updates = apply(variables, True)
    np.testing.assert_allclose(outputs, expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(updates["batch_stats"]["bn3"]["var"], model[9].running_var.numpy(), rtol=1e-5)


def test_denoise_net_init_is_pytorch_default():
    init = jax.jit(lambda key: anonynoise.DenoiseNet().init(key, jnp.zeros((1, 4, 4, CHANNELS)), train=False))
    params = init(jax.random.key(22))["params"]
    assert sorted(params) == sorted([f"conv{i}" for i in range(15)] + [f"bn{i}" for i in range(1, 14)])
    bound = 1.0 / np.sqrt(9 * 128)
    kernel = params["conv7"]["kernel"]
    assert np.max(np.abs(kernel)) <= bound
    np.testing.assert_allclose(np.std(kernel), bound / np.sqrt(3), rtol=0.02)
    assert np.max(np.abs(params["conv7"]["bias"])) <= bound and np.any(params["conv7"]["bias"] != 0)
    np.testing.assert_array_equal(params["bn7"]["scale"], 1.0)
    np.testing.assert_array_equal(params["bn7"]["bias"], 0.0)


# ---------------------------------------------------------------- ImageNet (torchvision) weights
def test_cyclic_input_channels_repeats_rgb_filters():
    weight = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1, 1)
    widened = torchvision_resnet.cyclic_input_channels(weight, 10)
    assert widened.shape == (2, 10, 1, 1)
    np.testing.assert_array_equal(widened[0, :, 0, 0], [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(widened[1, :, 0, 0], [3, 4, 5, 3, 4, 5, 3, 4, 5, 3])
    np.testing.assert_array_equal(torchvision_resnet.cyclic_input_channels(weight, 2)[0, :, 0, 0], [0, 1])


@pytest.fixture(scope="module")
def torchvision_resnet18():
    """A torchvision-layout RGB ResNet-18 (width 8) with an fc layer and random BN statistics."""
    torch.manual_seed(23)
    blocks, block = TORCH_STAGE_BLOCKS[18]
    return _randomize_batch_norms(TorchResNet(blocks, block, in_channels=3, last_stride=2, num_fc=5, width=8)).eval()


def _numpy_state_dict(model):
    return {key: value.numpy() for key, value in model.state_dict().items()}


def test_imagenet_stem_init_matches_torch_with_repeated_filters(classnet_pair, torchvision_resnet18):
    variables, _ = classnet_pair
    loaded = anonynoise.imagenet_classnet_params(variables, _numpy_state_dict(torchvision_resnet18))
    rgb = torchvision_resnet18.conv1.weight.detach()
    kernel = np.asarray(loaded["params"]["backbone"]["conv1"]["kernel"])
    assert kernel.shape == (7, 7, CHANNELS, 8)
    for channel in range(CHANNELS):
        np.testing.assert_array_equal(kernel[:, :, channel, :], rgb[:, channel % 3].numpy().transpose(1, 2, 0))
    for path, value in traverse_util.flatten_dict(variables["params"]["head"]).items():
        np.testing.assert_array_equal(traverse_util.flatten_dict(loaded["params"]["head"])[path], value)
    # The same trunk in PyTorch with a 10-channel conv1 built as R, G, B, R, G, B, R, G, B, R.
    frames = _frames(CLASSNET_INPUT, seed=24)
    widened = copy.deepcopy(torchvision_resnet18)
    with torch.no_grad():
        widened.conv1 = tnn.Conv2d(CHANNELS, 8, 7, 2, 3, bias=False)
        widened.conv1.weight.copy_(torch.cat([rgb, rgb, rgb, rgb[:, :1]], dim=1))
        expected = widened(to_nchw(frames)).numpy()
    np.testing.assert_allclose(classnet_eval(loaded, frames)["pool5"], expected, atol=1e-4, rtol=1e-4)


def test_resnet50_state_dict_maps_onto_the_bottleneck_trunk():
    blocks, block = TORCH_STAGE_BLOCKS[50]
    model = TorchResNet(blocks, block, in_channels=3, last_stride=2, num_fc=5, width=4)
    network = anonynoise.ClassNet(7, depth=50, width=4, embed_dim=8)
    abstract = jax.eval_shape(lambda: network.init(jax.random.key(0), jnp.zeros((2, 32, 32, CHANNELS)), train=False))
    state = _numpy_state_dict(model)
    trunk = torchvision_resnet.trunk_variables(
        state, {collection: abstract[collection]["backbone"] for collection in ("params", "batch_stats")})
    np.testing.assert_array_equal(trunk["params"]["layer2_0"]["downsample_conv"]["kernel"],
                                  state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(trunk["batch_stats"]["layer4_2"]["bn3"]["var"], state["layer4.2.bn3.running_var"])
    assert trunk["params"]["conv1"]["kernel"].shape == (7, 7, CHANNELS, 4)


def test_state_dict_that_does_not_fit_is_named(classnet_pair, torchvision_resnet18):
    variables, _ = classnet_pair
    blocks, block = TORCH_STAGE_BLOCKS[34]
    deeper = _numpy_state_dict(TorchResNet(blocks, block, in_channels=3, last_stride=2, width=8))
    with pytest.raises(torchvision_resnet.TorchvisionConversionError, match=r"unexpected \['layer1\.2\.bn1\.bias'"):
        anonynoise.imagenet_classnet_params(variables, deeper)
    state = _numpy_state_dict(torchvision_resnet18)
    del state["bn1.running_var"]
    with pytest.raises(torchvision_resnet.TorchvisionConversionError, match=r"missing \['bn1\.running_var'\]"):
        anonynoise.imagenet_classnet_params(variables, state)


def test_read_state_dict(tmp_path, torchvision_resnet18):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision_resnet18.state_dict(), path)
    state = torchvision_resnet.read_state_dict(path)
    expected = _numpy_state_dict(torchvision_resnet18)
    assert sorted(state) == sorted(expected)
    np.testing.assert_array_equal(state["layer3.1.conv2.weight"], expected["layer3.1.conv2.weight"])
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(torchvision_resnet.TorchvisionConversionError, match="expected a state_dict"):
        torchvision_resnet.read_state_dict(tmp_path / "list.pth")
    with pytest.raises(torchvision_resnet.TorchvisionConversionError, match="no such checkpoint file"):
        torchvision_resnet.read_state_dict(tmp_path / "missing.pth")


def test_saved_anonymizer_loads_back_and_anonymises_identically(tmp_path):
    module = anonynoise.NoiseAnonymizer(CHANNELS, variant="mean_and_scaled_noise", noise_std=0.5,
                                        features=(4, 8, 8, 8, 4))
    params = jax.jit(module.init)({"params": jax.random.key(0), "noise": jax.random.key(1)},
                                  jnp.zeros((1, 8, 8, CHANNELS)))["params"]
    anonynoise.save_anonymizer(tmp_path / "anonymizer", module, params)
    loaded, loaded_params = anonynoise.load_anonymizer(tmp_path / "anonymizer")
    assert (loaded.num_channels, loaded.variant, loaded.noise_std, tuple(loaded.features)) == (
        CHANNELS, "mean_and_scaled_noise", 0.5, (4, 8, 8, 8, 4))
    frames = _frames((2, 12, 6, CHANNELS), seed=3)  # any frame size: the network is fully convolutional
    rngs = {"noise": jax.random.key(2)}
    np.testing.assert_array_equal(loaded.apply({"params": loaded_params}, frames, rngs=rngs),
                                  module.apply({"params": params}, frames, rngs=rngs))


def test_bad_anonymizer_directories_are_named(tmp_path):
    module = anonynoise.NoiseAnonymizer(CHANNELS, features=(4, 8, 8, 8, 4))
    params = jax.jit(module.init)({"params": jax.random.key(0), "noise": jax.random.key(1)},
                                  jnp.zeros((1, 8, 8, CHANNELS)))["params"]
    with pytest.raises(anonynoise.AnonymizerFileError, match="anonynoise_anonymizer.json is missing"):
        anonynoise.load_anonymizer(tmp_path)
    with pytest.raises(anonynoise.AnonymizerFileError, match="do not match the anonymizer"):
        anonynoise.save_anonymizer(tmp_path / "wide", anonynoise.NoiseAnonymizer(CHANNELS), params)
    anonynoise.save_anonymizer(tmp_path / "saved", module, params)
    settings = tmp_path / "saved" / anonynoise.ANONYMIZER_FILE
    document = json.loads(settings.read_text())
    document["anonymizer"]["features"] = [4, 8, 8, 8, 5]  # params saved for other widths
    settings.write_text(json.dumps(document))
    with pytest.raises(anonynoise.AnonymizerFileError, match="do not match anonynoise_anonymizer.json"):
        anonynoise.load_anonymizer(tmp_path / "saved")
    document["anonymizer"]["variant"] = "louder"
    settings.write_text(json.dumps(document))
    with pytest.raises(anonynoise.AnonymizerFileError, match="not a valid anonymizer description"):
        anonynoise.load_anonymizer(tmp_path / "saved")


def test_method_takes_the_trunk_from_config_model_imagenet_weights(tmp_path, torchvision_resnet18):
    torch.save(torchvision_resnet18.state_dict(), tmp_path / "resnet18.pth")
    config = anonynoise_config.get_config("smoke")
    config.model.depth, config.model.width = 18, 8
    net = anonynoise.ClassNet(7, depth=18, width=8, embed_dim=16)
    assert anonynoise_method.imagenet_init(config, net, (32, 16, CHANNELS)) is None  # "" trains from scratch
    config.model.imagenet_weights = str(tmp_path / "resnet18.pth")
    variables = anonynoise_method.imagenet_init(config, net, (32, 16, CHANNELS))
    rgb = torchvision_resnet18.conv1.weight.detach().numpy()
    kernel = np.asarray(variables["params"]["backbone"]["conv1"]["kernel"])
    np.testing.assert_array_equal(kernel[:, :, 4, :], rgb[:, 1].transpose(1, 2, 0))  # channel 4 copies G
    np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["bn1"]["mean"],
                                  torchvision_resnet18.bn1.running_mean.numpy())
