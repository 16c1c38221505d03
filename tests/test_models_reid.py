"""ReId network tests: golden parameter counts, parity with a hand-written PyTorch ResNet/ClassBlock
(torchvision layout), initialisers, heads and config building."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
from flax import traverse_util
from torch import nn as tnn

from anon_jax.models import reid
from benchmarks.torch_models import (TorchBasicBlock, TorchBottleneck, TorchClassBlock, TorchReId, TorchResNet,
                                      reid_variables_from_torch)


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _abstract_variables(module, input_shape):
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(input_shape), train=False))


# ---------------------------------------------------------------- parameter counts
@pytest.mark.parametrize(
    "depth, block, blocks, torchvision_total",
    [
        (18, TorchBasicBlock, (2, 2, 2, 2), 11_689_512),
        (34, TorchBasicBlock, (3, 4, 6, 3), 21_797_672),
        (50, TorchBottleneck, (3, 4, 6, 3), 25_557_032),
    ],
)
def test_trunk_parameter_counts_match_torchvision(depth, block, blocks, torchvision_total):
    torch_model = TorchResNet(blocks, block, num_fc=1000)
    torch_total = sum(p.numel() for p in torch_model.parameters())
    assert torch_total == torchvision_total
    trunk = _abstract_variables(reid.ResNet(depth, last_stride=2), (1, 64, 32, 3))
    fc = reid.feature_width(depth) * 1000 + 1000
    assert _count(trunk["params"]) + fc == torchvision_total
    # Running statistics: mean and var of every BN channel, as torch buffers (without num_batches_tracked).
    torch_stats = sum(b.numel() for n, b in torch_model.named_buffers() if not n.endswith("num_batches_tracked"))
    assert _count(trunk["batch_stats"]) == torch_stats


def test_paper_network_parameter_counts():
    # Reference 1.5: backbone with 5-channel conv1 incl. unused fc 25,563,304; fc 2,049,000.
    variables = _abstract_variables(reid.ReIdNetwork(50, 22), (1, 64, 32, 5))
    assert _count(variables["params"]["backbone"]) == 25_563_304 - 2_049_000 == 23_514_304
    # ClassBlock(2048, 22): 2048*256+256 + 2*256 + 256*22+22.
    assert _count(variables["params"]["head"]) == 530_710
    torch_head = TorchClassBlock(2048, 22)
    assert sum(p.numel() for p in torch_head.parameters()) == 530_710


# ---------------------------------------------------------------- numerical parity with PyTorch
@pytest.fixture(scope="module")
def resnet18_pair():
    """A torch ResNet-18 (last stride 1, 5-channel conv1) + ClassBlock with random BN statistics, and the
    same weights in the Flax ReIdNetwork."""
    torch.manual_seed(0)
    torch_model = TorchReId(num_classes=22, in_channels=5).double()
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        # Larger than the N(0, 0.001) init so the logits comparison is not trivially small.
        torch_model.classifier.classifier.weight.normal_(0.0, 0.1)
        torch_model.classifier.classifier.bias.uniform_(-0.1, 0.1)
    flax_model = reid.ReIdNetwork(18, 22, width=64, last_stride=1)
    variables = reid_variables_from_torch(torch_model, _abstract_variables(flax_model, (1, 32, 16, 5)))
    return torch_model, flax_model, variables


def test_resnet18_classblock_matches_torch_in_eval_mode(resnet18_pair):
    torch_model, flax_model, variables = resnet18_pair
    x = np.random.default_rng(0).normal(size=(2, 32, 16, 5))
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    outputs = jax.jit(lambda v, x: flax_model.apply(v, x, train=False))(variables, jnp.asarray(x, jnp.float32))
    assert outputs["pool5"].shape == (2, 512) and outputs["embed"].shape == (2, 256)
    assert outputs["logits"].shape == (2, 22)
    for name in ("pool5", "embed", "logits"):
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), rtol=1e-4, atol=1e-4, err_msg=name)


def test_resnet18_train_mode_matches_torch_batch_statistics(resnet18_pair):
    torch_model, flax_model, variables = resnet18_pair
    x = np.random.default_rng(1).normal(size=(3, 32, 16, 5))
    reference = TorchReId(num_classes=22, in_channels=5).double()
    reference.load_state_dict(torch_model.state_dict())
    reference.train()
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    outputs, updates = jax.jit(lambda v, x: flax_model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(x, jnp.float32)
    )
    for name in ("pool5", "embed", "logits"):
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), rtol=1e-3, atol=1e-3, err_msg=name)
    # Running statistics follow PyTorch exactly: momentum 0.1 and the unbiased variance.
    for flax_stats, torch_bn in ((updates["batch_stats"]["backbone"]["bn1"], reference.model.bn1),
                                 (updates["batch_stats"]["head"]["embed_bn"], reference.classifier.add_block[1])):
        np.testing.assert_allclose(flax_stats["mean"], torch_bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(flax_stats["var"], torch_bn.running_var.numpy(), rtol=1e-4, atol=1e-5)


def test_initialisers_follow_torch_recipes():
    @jax.jit
    def sample(key):
        conv_key, head_key = jax.random.split(key)
        conv1 = reid.kaiming_normal_fan_out(conv_key, (7, 7, 5, 64))
        return conv1, reid.ClassBlock(22).init(head_key, jnp.zeros((2, 2048)), train=False)["params"]

    conv1, head = sample(jax.random.PRNGKey(0))
    conv1 = np.asarray(conv1)  # fan_out = 7*7*64
    assert abs(conv1.std() - np.sqrt(2.0 / (7 * 7 * 64))) < 0.05 * np.sqrt(2.0 / (7 * 7 * 64))
    assert np.abs(conv1).max() > 3 * conv1.std()  # untruncated normal, as torch's kaiming_normal_
    embed_kernel = np.asarray(head["embed_dense"]["kernel"])  # (2048, 256): fan_out = 256
    assert abs(embed_kernel.std() - np.sqrt(2.0 / 256)) < 0.02 * np.sqrt(2.0 / 256)
    scale = np.asarray(head["embed_bn"]["scale"])
    assert abs(scale.mean() - 1.0) < 0.01 and 0.015 < scale.std() < 0.025
    assert abs(np.asarray(head["logits_dense"]["kernel"]).std() - 0.001) < 0.0002
    for bias in (head["embed_dense"]["bias"], head["embed_bn"]["bias"], head["logits_dense"]["bias"]):
        assert not np.any(np.asarray(bias))


# ---------------------------------------------------------------- shapes, heads, config
@pytest.mark.parametrize("last_stride, spatial", [(1, (2, 1)), (2, (1, 1))])
def test_resnet50_narrow_shapes(last_stride, spatial):
    trunk = reid.ResNet(50, width=8, last_stride=last_stride)
    feature_map = jax.eval_shape(
        lambda x: trunk.apply(trunk.init(jax.random.PRNGKey(0), x, train=False), x, train=False),
        jnp.zeros((1, 32, 16, 5)),
    )
    assert feature_map.shape == (1, *spatial, 8 * 8 * 4) == (1, *spatial, reid.feature_width(50, 8))


def test_bnneck_head_normalises_pool5_and_has_no_biases():
    model = reid.ReIdNetwork(18, 5, width=8, head="bnneck")
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 16, 3)), jnp.float32)
    # Random weights from NumPy (model.init compiles slowly on CPU); fresh running stats mean 0, var 1, scale 1.
    abstract = _abstract_variables(model, x.shape)
    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(0, 0.2, a.shape), jnp.float32), abstract["params"])
    params["head"]["embed_bn"]["scale"] = jnp.ones_like(params["head"]["embed_bn"]["scale"])
    stats = traverse_util.flatten_dict(abstract["batch_stats"])
    stats = {k: jnp.zeros(v.shape) if k[-1] == "mean" else jnp.ones(v.shape) for k, v in stats.items()}
    variables = {"params": params, "batch_stats": traverse_util.unflatten_dict(stats)}
    head = variables["params"]["head"]
    assert set(traverse_util.flatten_dict(head)) == {("embed_bn", "scale"), ("logits_dense", "kernel")}
    outputs = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    pool5 = np.asarray(outputs["pool5"])
    assert pool5.shape == (2, 64) and np.all(pool5 >= 0) and np.any(pool5 > 0)
    np.testing.assert_allclose(outputs["embed"], pool5 / np.sqrt(1 + 1e-5), rtol=1e-5)
    expected_logits = pool5 / np.sqrt(1 + 1e-5) @ np.asarray(head["logits_dense"]["kernel"])
    np.testing.assert_allclose(outputs["logits"], expected_logits, rtol=1e-4, atol=1e-6)


def test_bfloat16_compute_returns_float32_outputs():
    model = reid.ReIdNetwork(18, 5, width=8, dtype=jnp.bfloat16)
    x = jnp.zeros((2, 32, 16, 3))
    outputs = jax.eval_shape(
        lambda x: model.apply(model.init(jax.random.PRNGKey(0), x, train=False), x, train=False), x
    )
    # Losses and retrieval get float32 (tests/test_mixed_precision.py checks that the layers run in bfloat16).
    assert outputs["pool5"].dtype == outputs["embed"].dtype == outputs["logits"].dtype == jnp.float32


def _model_config(**overrides):
    config = ml_collections.ConfigDict(dict(depth=34, width=16, last_stride=2, head="bnneck", embed_dim=64))
    config.update(overrides)
    return config


def test_build_reid_network_from_config():
    model = reid.build_reid_network(_model_config(), num_classes=np.int64(9))
    assert (model.depth, model.width, model.last_stride, model.head, model.num_classes) == (34, 16, 2, "bnneck", 9)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(depth=26), "depth=26"),
        (dict(width=0), "width=0"),
        (dict(last_stride=3), "last_stride=3"),
        (dict(head="arcface"), "head='arcface'"),
        (dict(embed_dim=-1), "embed_dim=-1"),
    ],
)
def test_build_reid_network_rejects_bad_values(overrides, message):
    with pytest.raises(reid.ReIdNetworkError, match=message.replace("(", r"\(")):
        reid.build_reid_network(_model_config(**overrides), num_classes=3)


def test_build_reid_network_names_missing_fields():
    config = _model_config()
    del config["embed_dim"]
    with pytest.raises(ValueError, match="embed_dim"):
        reid.build_reid_network(config, num_classes=3)
    with pytest.raises(ValueError, match="num_classes=0"):
        reid.build_reid_network(_model_config(), num_classes=0)
