"""The benchmarks' PyTorch builds compute what the Flax networks compute with weights copied from Flax variables
(E2VID default and lightweight over carried state, the published anonymizer, ResNet-18/50 + ClassBlock in eval and
train mode), and `--quick` runs of the reconstruction and training-step benchmarks write their JSON (the latter
checking that both frameworks' first joint steps agree)."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from anon_jax.models import anonymizer, e2vid, reid
from benchmarks import reconstruction, torch_models, training_step

TOLERANCE = 1e-5


def random_voxels(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * (rng.uniform(size=shape) < 0.3)).astype(np.float32)


@pytest.mark.parametrize("name", ["cpu_default", "lightweight"])
def test_e2vid_from_flax_matches_over_carried_state(name):
    config = reconstruction.architectures()[name]
    module = e2vid.E2VID(config)
    variables = reconstruction.random_variables(module, seed=0)
    model = torch_models.e2vid_from_flax(config, variables)
    windows = random_voxels((3, 2, 16, 24, 5), seed=1)
    images, final_state = e2vid.run_sequence(module, variables, windows)
    torch_images = reconstruction.torch_sequence(model, config, torch.from_numpy(windows.transpose(0, 1, 4, 2, 3)))
    torch_images = torch_images.numpy().transpose(0, 1, 3, 4, 2)
    assert images.shape == torch_images.shape == (3, 2, 16, 24, 1)
    assert float(np.std(torch_images)) > 1e-3  # the images vary, so the comparison means something
    np.testing.assert_allclose(images, torch_images, atol=TOLERANCE, rtol=0)
    # The state handed on from the last window, stepped by hand in PyTorch.
    states = reconstruction.torch_initial_state(config, 2, 16, 24)
    with torch.no_grad():
        for window in torch.from_numpy(windows.transpose(0, 1, 4, 2, 3)):
            _, states = model(window, states)
    assert torch_models.tree_max_difference(final_state, states) <= TOLERANCE
    if name == "lightweight":  # BatchNorm with the random running statistics is in use
        assert set(variables) == {"params", "batch_stats"}


def test_anonymizer_from_flax_matches():
    module = anonymizer.PublishedAnonymizer()
    voxels = random_voxels((2, 13, 9, 5), seed=2)
    params = jax.jit(module.init)(jax.random.key(0), voxels)["params"]
    model = torch_models.anonymizer_from_flax(params)
    with torch.no_grad():
        theirs = torch_models.to_nhwc(model(torch_models.to_nchw(voxels)))
    np.testing.assert_allclose(module.apply({"params": params}, voxels), theirs, atol=TOLERANCE, rtol=0)
    # And back: the ANmodel's weights give the same Flax params.
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree_util.tree_leaves(torch_models.anonymizer_params_from_torch(model))):
        np.testing.assert_array_equal(a, b, err_msg=str(path))


def random_reid_variables(network, input_shape, seed):
    """Variables of `network` with random weights and running statistics (NumPy: no slow init compile)."""
    abstract = jax.eval_shape(lambda x: network.init(jax.random.key(0), x, train=False), jnp.zeros(input_shape))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name in ("var", "scale"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        if name == "kernel":  # variance 1 / fan_in keeps the activations of order 1 through the depth
            return jnp.asarray(rng.normal(0.0, 1.0 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.2, leaf.shape), jnp.float32)  # biases and running means

    return jax.tree_util.tree_map_with_path(draw, abstract)


@pytest.mark.parametrize("depth, width", [(18, 32), (50, 8)])  # the default ReId network; the paper's Bottleneck
def test_reid_from_flax_matches_in_eval_and_train_mode(depth, width):
    network = reid.build_reid_network(ml_collections.ConfigDict(
        dict(depth=depth, width=width, last_stride=1, head="classblock", embed_dim=32)), num_classes=7)
    x = random_voxels((4, 32, 16, 5), seed=3)
    variables = random_reid_variables(network, x.shape, seed=4)
    model = torch_models.reid_from_flax(network, variables)
    apply = jax.jit(lambda v, x, train: network.apply(v, x, train=train, mutable=["batch_stats"] if train else False),
                    static_argnums=2)
    model.eval()
    with torch.no_grad():
        expected = model(torch_models.to_nchw(x))
    outputs = apply(variables, x, False)
    for name in ("pool5", "embed", "logits"):
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
    model.train()
    with torch.no_grad():
        expected = model(torch_models.to_nchw(x))
    outputs, updates = apply(variables, x, True)
    # Batch statistics over the last stage's 4 x 2 x 1 values per channel amplify float32 rounding.
    for name in ("pool5", "embed", "logits"):
        np.testing.assert_allclose(outputs[name], expected[name].numpy(), atol=1e-3, rtol=1e-3, err_msg=name)
    np.testing.assert_allclose(updates["batch_stats"]["backbone"]["bn1"]["var"], model.model.bn1.running_var.numpy(),
                               rtol=1e-5, atol=TOLERANCE)


def test_mismatched_variables_are_named():
    config = e2vid.e2vid_config(base_channels=4, num_encoders=2, num_residual_blocks=1, norm="none")
    variables = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), e2vid.abstract_variables(config))
    with pytest.raises(torch_models.TorchModelError, match=r"head\.conv2d\.weight: \(4, 5, 5, 5\) vs \(8, 5, 5, 5\)"):
        torch_models.e2vid_from_flax(e2vid.e2vid_config(base_channels=8, num_encoders=2, num_residual_blocks=1,
                                                        norm="none"), variables)
    with pytest.raises(torch_models.TorchModelError, match=r"without a Flax variable \['resblocks\.1\.conv1"):
        torch_models.e2vid_from_flax(e2vid.e2vid_config(base_channels=4, num_encoders=2, num_residual_blocks=2,
                                                        norm="none"), variables)


def read_results(path):
    record = json.loads(path.read_text())
    assert {"benchmark", "machine", "meta", "rows"} <= set(record)
    return record


def test_reconstruction_quick_run_writes_json(tmp_path):
    reconstruction.main(["--quick", "--out", str(tmp_path)])
    record = read_results(tmp_path / "reconstruction.json")
    rows = record["rows"]
    frameworks = {"jax scan (run_sequence)", "jax unrolled scan", "torch eager"}
    assert {(r["architecture"], r["framework"]) for r in rows} == {
        (a, f) for a in ("cpu_default", "lightweight") for f in frameworks}
    for row in rows:
        assert row["frames_per_s"] > 0 and row["repeats"] == 2
        assert row["max_abs_diff_vs_jax"] <= TOLERANCE
    assert record["meta"]["torch_compile"] is False


def test_training_step_quick_run_writes_json(tmp_path):
    training_step.main(["--quick", "--out", str(tmp_path)])
    rows = read_results(tmp_path / "training_step.json")["rows"]
    full = [r for r in rows if r["part"] == "full step"]
    assert [(r["case"], r["framework"]) for r in full] == [
        (case, framework) for case in ("reid default (quick)", "joint default (quick)")
        for framework in ("jax jit", "torch eager")]
    assert all(r["samples_per_s"] > 0 and 0 < r["fraction_of_peak"] for r in full)
    # The two frameworks' first steps agree: same loss terms, same anonymizer update through every network.
    assert full[0]["first_step_loss_max_abs_diff"] <= 1e-4
    assert full[2]["first_step_loss_max_abs_diff"] <= 1e-3
    assert full[2]["anonymizer_param_max_abs_diff_after_step"] <= TOLERANCE
    assert len(rows) == len(full)  # the per-part timings are left out of --quick
