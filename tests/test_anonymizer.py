"""The anonymizers: the published ANmodel against a PyTorch build of it (outputs, 24,341 parameters, PyTorch's
default init), the residual U-Net (identity at start, no batch_stats, gradients), configs and save/load."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from anon_jax.models import anonymizer
from benchmarks.torch_models import ANONYMIZER_CONVS, anonymizer_params_from_torch, torch_anmodel

VOXEL = {"num_bins": 5, "height": 16, "width": 12, "partition_mode": "time", "chunk_duration": 33300.0,
         "chunk_count": 5000}


def init_params(module, shape):
    """Flax init, jitted; the non-partitionable threefry compiles many times faster on CPU (values do not matter)."""
    with jax.threefry_partitionable(False):
        return jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros(shape, jnp.float32))


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return torch_anmodel().eval()


@pytest.fixture(scope="module")
def published_params(torch_model):
    return anonymizer_params_from_torch(torch_model)


@pytest.fixture(scope="module")
def apply_published():
    module = anonymizer.PublishedAnonymizer()
    return jax.jit(lambda params, voxels: module.apply({"params": params}, voxels))


@pytest.fixture(scope="module")
def unet():
    module = anonymizer.ResidualUNet(out_channels=3, base_features=4, num_levels=2)
    return module, init_params(module, (1, 8, 12, 3))


def test_published_parameter_count():
    counts = {name: anonymizer.parameter_count(p) for name, p in
              anonymizer.abstract_params(anonymizer.anonymizer_config()).items()}
    # Conv weights k*k*in*out plus out biases.
    assert counts == {"encoder_conv1": 9 * 5 * 64 + 64, "encoder_conv2": 9 * 64 * 16 + 16,
                      "decoder_conv1": 9 * 16 * 64 + 64, "decoder_conv2": 9 * 64 * 5 + 5}
    assert sum(counts.values()) == 24341
    assert anonymizer.parameter_count(anonymizer.abstract_params(anonymizer.anonymizer_config(num_bins=3))) == (
        9 * 3 * 64 + 64 + 9232 + 9280 + 9 * 64 * 3 + 3)


@pytest.mark.parametrize("shape", [(2, 13, 9), (1, 3, 4), (1, 16, 12)])
def test_published_matches_pytorch(torch_model, published_params, apply_published, shape):
    batch, height, width = shape
    voxels = np.random.default_rng(height).normal(size=(batch, height, width, 5)).astype(np.float32)
    ours = np.asarray(apply_published(published_params, voxels))
    with torch.no_grad():
        theirs = torch_model(torch.from_numpy(voxels).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape == voxels.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    assert ours.min() > 0 and ours.max() < 1


def test_published_default_init_like_pytorch(torch_model):
    params = init_params(anonymizer.PublishedAnonymizer(), (1, 4, 4, 5))["params"]
    assert anonymizer.parameter_count(params) == 24341
    for index, name in ANONYMIZER_CONVS.items():
        kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
        torch_weight = torch_model[index].weight.detach().numpy()
        fan_in = torch_weight[0].size
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) and the bias both use 1/sqrt(fan_in)
        assert kernel.shape == torch_weight.transpose(2, 3, 1, 0).shape
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
        assert np.abs(bias).max() <= bound
        np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.1)  # std of U(-b, b)
        np.testing.assert_allclose(kernel.std(), torch_weight.std(), rtol=0.1)
        assert abs(kernel.mean()) < 0.1 * bound


def test_published_rejects_bad_input(published_params):
    module = anonymizer.PublishedAnonymizer()
    with pytest.raises(anonymizer.AnonymizerInputError, match=r"\(batch, height, width, 5\)"):
        module.apply({"params": published_params}, jnp.zeros((1, 8, 8, 4)))
    with pytest.raises(anonymizer.AnonymizerInputError, match="height and width >= 3"):
        module.apply({"params": published_params}, jnp.zeros((1, 2, 8, 5)))


def test_residual_unet_starts_as_identity_without_batch_stats(unet):
    module, variables = unet
    assert set(variables) == {"params"}
    assert set(variables["params"]) == {"down0", "down1", "bottleneck", "up1", "merge1", "up0", "merge0", "residual"}
    assert variables["params"]["down1"]["conv1"]["kernel"].shape == (3, 3, 4, 8)  # features double per level
    assert variables["params"]["bottleneck"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
    assert variables["params"]["merge0"]["conv1"]["kernel"].shape == (3, 3, 8, 4)  # up + skip concatenated
    voxels = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(module.apply(variables, voxels)), voxels)


def test_residual_unet_rejects_bad_sizes(unet):
    module, variables = unet
    with pytest.raises(anonymizer.AnonymizerInputError, match=r"divisible by 4, got 8x10"):
        module.apply(variables, jnp.zeros((1, 8, 10, 3)))
    with pytest.raises(anonymizer.AnonymizerInputError, match=r"\(batch, height, width, 3\)"):
        module.apply(variables, jnp.zeros((1, 8, 8, 5)))


def test_residual_unet_gradients_flow(unet):
    module, variables = unet
    rng = np.random.default_rng(1)
    voxels, target = (rng.normal(size=(2, 8, 12, 3)).astype(np.float32) for _ in range(2))

    def loss(params, voxels):
        return jnp.mean((module.apply({"params": params}, voxels) - target) ** 2)

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
    params = variables["params"]
    grads, input_grad = grad_fn(params, voxels)
    # At the start the network is the identity: d/dx mean((x - y)^2) = 2 (x - y) / size.
    np.testing.assert_allclose(np.asarray(input_grad), 2 * (voxels - target) / voxels.size, rtol=1e-5, atol=1e-8)
    assert np.abs(np.asarray(grads["residual"]["kernel"])).max() > 0
    # The zero final conv blocks gradients to the inner layers until it has moved once.
    assert np.abs(np.asarray(grads["down0"]["conv1"]["kernel"])).max() == 0
    stepped = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    grads, _ = grad_fn(stepped, voxels)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree_util.tree_leaves(grads))


def test_config_and_build():
    config = anonymizer.anonymizer_config()
    assert dict(config) == {"kind": "published", "num_bins": 5, "base_features": 32, "num_levels": 2}
    assert anonymizer.build_anonymizer(config) == anonymizer.PublishedAnonymizer(num_bins=5)
    unet = anonymizer.build_anonymizer(anonymizer.anonymizer_config(kind="residual_unet", num_bins=3, num_levels=3))
    assert unet == anonymizer.ResidualUNet(out_channels=3, base_features=32, num_levels=3)
    with pytest.raises(anonymizer.AnonymizerConfigError, match="unknown anonymizer config field.*'depth'"):
        anonymizer.anonymizer_config(depth=3)
    with pytest.raises(anonymizer.AnonymizerConfigError, match="kind='unet'"):
        anonymizer.anonymizer_config(kind="unet")
    with pytest.raises(anonymizer.AnonymizerConfigError, match="num_levels=0 must be a positive integer"):
        anonymizer.anonymizer_config(num_levels=0)


def test_save_load_round_trip(published_params, apply_published, unet, tmp_path):
    config = anonymizer.anonymizer_config()
    directory = tmp_path / "anonymizer"
    anonymizer.save_pretrained(directory, config, published_params, voxel=VOXEL)
    document = json.loads((directory / "anonymizer.json").read_text())
    assert document == {"format": anonymizer.CHECKPOINT_FORMAT, "config": dict(config), "voxel": VOXEL}
    module, params, voxel = anonymizer.load_pretrained(directory)
    assert module == anonymizer.PublishedAnonymizer() and voxel == VOXEL
    voxels = np.random.default_rng(2).normal(size=(1, 16, 12, 5)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(apply_published(params, voxels)),
                                  np.asarray(apply_published(published_params, voxels)))
    # Saving again replaces the folder whole: a residual U-Net now, with count partitioning.
    unet_module, unet_variables = unet
    unet_config = anonymizer.anonymizer_config(kind="residual_unet", num_bins=3, base_features=4)
    count_voxel = {**VOXEL, "num_bins": 3, "partition_mode": "count", "chunk_duration": None, "chunk_count": 700}
    anonymizer.save_pretrained(directory, unet_config, unet_variables["params"], voxel=count_voxel)
    module, params, voxel = anonymizer.load_pretrained(directory)
    assert module == unet_module and voxel == count_voxel
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, unet_variables["params"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anonymizer"]  # no staging folders left


def test_save_rejects_bad_input(published_params, tmp_path):
    config = anonymizer.anonymizer_config()
    with pytest.raises(anonymizer.AnonymizerCheckpointError, match="not the whole variables dict"):
        anonymizer.save_pretrained(tmp_path / "a", config, {"params": published_params}, voxel=VOXEL)
    with pytest.raises(anonymizer.AnonymizerConfigError, match="differs from the anonymizer's num_bins=5"):
        anonymizer.save_pretrained(tmp_path / "a", config, published_params, voxel={**VOXEL, "num_bins": 4})
    with pytest.raises(anonymizer.AnonymizerConfigError, match=r"missing \['chunk_count'\]"):
        anonymizer.save_pretrained(tmp_path / "a", config, published_params,
                                   voxel={k: v for k, v in VOXEL.items() if k != "chunk_count"})
    with pytest.raises(anonymizer.AnonymizerConfigError, match="chunk_duration=None must be a positive number"):
        anonymizer.save_pretrained(tmp_path / "a", config, published_params, voxel={**VOXEL, "chunk_duration": None})
    with pytest.raises(anonymizer.AnonymizerConfigError, match="must be multiples of 4"):
        anonymizer.check_voxel_settings({**VOXEL, "height": 18}, anonymizer.anonymizer_config(kind="residual_unet"))
    assert not any(tmp_path.iterdir())


def test_load_errors_name_the_file(published_params, tmp_path):
    with pytest.raises(anonymizer.AnonymizerCheckpointError, match=r"missing.*anonymizer\.json is missing"):
        anonymizer.load_pretrained(tmp_path / "missing")
    directory = tmp_path / "saved"
    anonymizer.save_pretrained(directory, anonymizer.anonymizer_config(), published_params, voxel=VOXEL)
    description = directory / "anonymizer.json"
    good = description.read_text()
    description.write_text(good[:40])
    with pytest.raises(anonymizer.AnonymizerCheckpointError, match=r"anonymizer\.json: not valid JSON.*rewrite the directory"):
        anonymizer.load_pretrained(directory)
    description.write_text(good.replace('"kind": "published"', '"kind": "mask"'))
    with pytest.raises(anonymizer.AnonymizerCheckpointError, match=r"anonymizer\.json: not a valid.*kind='mask'"):
        anonymizer.load_pretrained(directory)
    # A description that no longer matches the saved tensors.
    description.write_text(good.replace('"num_bins": 5', '"num_bins": 4'))
    with pytest.raises(anonymizer.AnonymizerCheckpointError,
                       match=r"params: the saved parameters do not match.*encoder_conv1/kernel: \(3, 3, 5, 64\) vs"):
        anonymizer.load_pretrained(directory)
    description.write_text(good)
    for path in (directory / "params").rglob("*"):
        if path.is_file() and path.parent.name == "d":  # Orbax's data files
            path.write_bytes(b"corrupt")
    with pytest.raises(anonymizer.AnonymizerCheckpointError, match="params: the saved parameters are unreadable"):
        anonymizer.load_pretrained(directory)
    for path in sorted((directory / "params").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (directory / "params").rmdir()
    with pytest.raises(anonymizer.AnonymizerCheckpointError, match="params is missing"):
        anonymizer.load_pretrained(directory)
