"""E2VID tests: the hand-written PyTorch E2VID of benchmarks/torch_models.py (the published key/shape layout) saved
as the published checkpoint format, converted and compared with the Flax model over windows with carried state; parameter count, padding,
upsampling, conversion errors, the sequence runner and the command."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn as tnn

from anon_jax.convert import e2vid as convert
from anon_jax.models import e2vid
from benchmarks.torch_models import torch_e2vid

TOLERANCE = 1e-4


def save_published(model, path, arch, model_config, nested=False):
    """torch.save in the published format: {'arch', 'model' (or 'config': {'model'}), 'state_dict'}."""
    raw = {"arch": arch, "state_dict": model.state_dict()}
    if nested:
        raw["config"] = {"model": model_config}
    else:
        raw["model"] = model_config
    torch.save(raw, path)


def to_nhwc(tensor):
    return jnp.asarray(tensor.detach().numpy().transpose(0, 2, 3, 1))


def max_diff(flax_array, torch_tensor):
    return float(np.max(np.abs(np.asarray(flax_array) - torch_tensor.detach().numpy().transpose(0, 2, 3, 1))))


LIGHTWEIGHT = dict(e2vid.LIGHTWEIGHT)
PUBLISHED_LIGHTWEIGHT_CONFIG = {
    "num_bins": 5, "skip_type": "sum", "recurrent_block_type": "convlstm", "num_encoders": 3,
    "base_num_channels": 32, "num_residual_blocks": 2, "use_upsample_conv": False, "norm": "BN",
}


@pytest.fixture(scope="module")
def lightweight(tmp_path_factory):
    """(torch model, checkpoint path, converted module, variables, jitted eval step) for E2VID_lightweight."""
    directory = tmp_path_factory.mktemp("e2vid_lightweight")
    model = torch_e2vid(LIGHTWEIGHT, seed=0)
    checkpoint = directory / "E2VID_lightweight.pth.tar"
    save_published(model, checkpoint, "E2VIDRecurrent", PUBLISHED_LIGHTWEIGHT_CONFIG)
    assert convert.main([str(checkpoint), str(directory / "converted")]) == 0
    module, variables = e2vid.load_pretrained(directory / "converted")
    step = jax.jit(lambda v, x, s: module.apply(v, x, s, train=False))
    return model, checkpoint, module, variables, step


# ---------------------------------------------------------------- tests
def test_lightweight_parameter_count_and_published_key_table(lightweight):
    model, _, module, variables, _ = lightweight
    assert e2vid.parameter_count(e2vid.abstract_variables(e2vid.LIGHTWEIGHT)) == 10_712_098
    assert e2vid.parameter_count(variables) == 10_712_098
    state_dict = model.state_dict()
    assert len(state_dict) == 74
    assert sum(k.endswith("num_batches_tracked") for k in state_dict) == 11
    assert sum(t.numel() for t in model.parameters()) == 10_712_098
    assert tuple(state_dict["unetrecurrent.decoders.0.transposed_conv2d.weight"].shape) == (256, 128, 5, 5)
    assert tuple(state_dict["unetrecurrent.encoders.2.recurrent_block.Gates.weight"].shape) == (1024, 512, 3, 3)
    assert dict(module.config) == LIGHTWEIGHT


def test_lightweight_matches_pytorch_over_three_windows_with_carried_state(lightweight):
    model, _, module, variables, step = lightweight
    torch.manual_seed(1)
    windows = [torch.randn(1, 5, 32, 24) for _ in range(3)]
    torch_states, state, image_diffs, spreads = None, None, [], []
    with torch.no_grad():
        for window in windows:
            torch_image, torch_states = model.unetrecurrent(window, torch_states)
            image, state = step(variables, to_nhwc(window), state)
            image_diffs.append(max_diff(image, torch_image))
            spreads.append(float(torch_image.std()))
    assert max(image_diffs) <= TOLERANCE, image_diffs
    assert min(spreads) > 1e-3  # the images vary, so the comparison means something
    for (h, c), (torch_h, torch_c) in zip(state, torch_states):
        assert max_diff(h, torch_h) <= TOLERANCE and max_diff(c, torch_c) <= TOLERANCE
    # The sequence runner gives the same images and final state as stepping by hand.
    images, final = e2vid.run_sequence(module, variables, jnp.stack([to_nhwc(w) for w in windows]))
    assert images.shape == (3, 1, 32, 24, 1)
    assert float(jnp.max(jnp.abs(images[-1] - image))) <= 1e-5
    assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(final),
                                                                jax.tree_util.tree_leaves(state))) <= 1e-5


def test_non_multiple_size_through_reflection_pad_and_crop(lightweight):
    model, _, _, variables, step = lightweight
    torch.manual_seed(2)
    height, width = 30, 19  # padded to 32x24: rows 1 above / 1 below, columns 3 left / 2 right
    windows = [torch.randn(1, 5, height, width) for _ in range(2)]
    pad = tnn.ReflectionPad2d((3, 2, 1, 1))
    torch_states, state = None, None
    with torch.no_grad():
        for window in windows:
            torch_image, torch_states = model.unetrecurrent(pad(window), torch_states)
            # E2VID's CropParameters: start = floor(padded / 2) - floor(size / 2).
            top, left = 32 // 2 - height // 2, 24 // 2 - width // 2
            torch_image = torch_image[:, :, top:top + height, left:left + width]
            padded = e2vid.pad_to_multiple(to_nhwc(window), 8)
            assert padded.shape == (1, 32, 24, 5)
            image, state = step(variables, padded, state)
            image = e2vid.crop_to(image, height, width)
            assert image.shape == (1, height, width, 1)
            assert max_diff(image, torch_image) <= TOLERANCE


@pytest.mark.parametrize("block", ["convlstm", "convgru"])
def test_no_state_equals_an_explicit_zero_state(block):
    """state=None skips the hidden half of the gate conv (ConvLSTM); the result must equal zeros passed in."""
    config = e2vid.e2vid_config(base_channels=4, num_residual_blocks=1, norm="none", recurrent_block=block)
    module = e2vid.E2VID(config)
    voxels = jax.random.normal(jax.random.key(3), (2, 16, 24, 5))
    variables = module.init(jax.random.key(4), voxels)
    image, state = module.apply(variables, voxels, None)
    zero_image, zero_state = module.apply(variables, voxels, e2vid.initial_state(config, 2, 16, 24))
    np.testing.assert_allclose(image, zero_image, atol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), state, zero_state)


def test_pad_to_multiple_and_crop_by_hand():
    voxels = jnp.arange(15, dtype=jnp.float32).reshape(1, 3, 5, 1)
    padded = e2vid.pad_to_multiple(voxels, 4)  # rows 3 -> 4 (1 on top), columns 5 -> 8 (2 left, 1 right)
    expected = np.array([
        [7, 6, 5, 6, 7, 8, 9, 8],
        [2, 1, 0, 1, 2, 3, 4, 3],
        [7, 6, 5, 6, 7, 8, 9, 8],
        [12, 11, 10, 11, 12, 13, 14, 13],
    ], np.float32)
    np.testing.assert_array_equal(np.asarray(padded)[0, :, :, 0], expected)
    np.testing.assert_array_equal(e2vid.crop_to(padded, 3, 5), voxels)
    sequence = jnp.zeros((2, 1, 8, 16, 5))
    assert e2vid.pad_to_multiple(sequence, 8).shape == sequence.shape  # already a multiple: unchanged
    with pytest.raises(e2vid.E2VIDInputError, match="too small"):
        e2vid.pad_to_multiple(jnp.zeros((1, 2, 8, 1)), 8)


def test_bilinear_upsampling_matches_pytorch_align_corners_false():
    x = torch.randn(2, 3, 5, 4)
    expected = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert max_diff(e2vid.upsample_bilinear_x2(to_nhwc(x)), expected) <= 1e-6


TINY = dict(num_bins=3, num_encoders=2, base_channels=4, num_residual_blocks=1)


def test_unet_concat_upsample_instance_norm_matches_pytorch_in_eval_and_train(tmp_path):
    config = dict(e2vid.e2vid_config(recurrent=False, skip="concat", norm="IN", decoder="upsample_conv", **TINY))
    model = torch_e2vid(config, seed=3)
    # A partial stored config: the rest is inferred from the tensor shapes.
    save_published(model, tmp_path / "unet.pth.tar", "E2VID", {"num_bins": 3, "norm": "IN"})
    assert dict(convert.convert_checkpoint(tmp_path / "unet.pth.tar", tmp_path / "unet")) == config
    module, variables = e2vid.load_pretrained(tmp_path / "unet")
    torch.manual_seed(4)
    voxels = torch.randn(2, 3, 8, 12)
    image, state = jax.jit(module.apply)(variables, to_nhwc(voxels), None)
    assert image.shape == (2, 8, 12, 1) and state is None
    with torch.no_grad():
        torch_image, _ = model.unet(voxels)
    assert max_diff(image, torch_image) <= TOLERANCE
    # Training mode: per-map statistics, running statistics blended with the unbiased variance.
    model.train()
    with torch.no_grad():
        torch_image, _ = model.unet(voxels)
    train_step = jax.jit(functools.partial(module.apply, train=True, mutable=["batch_stats"]))
    (image, _), updates = train_step(variables, to_nhwc(voxels), None)
    assert max_diff(image, torch_image) <= TOLERANCE
    stats = updates["batch_stats"]
    for name, layer in (("encoder_1", model.unet.encoders[1]), ("decoder_0", model.unet.decoders[0])):
        np.testing.assert_allclose(stats[name]["norm"]["mean"], layer.norm_layer.running_mean.numpy(), atol=1e-5)
        np.testing.assert_allclose(stats[name]["norm"]["var"], layer.norm_layer.running_var.numpy(), atol=1e-5)
    assert "resblock_0" not in stats  # the residual blocks' InstanceNorm keeps no statistics


def test_recurrent_convgru_matches_pytorch_and_run_sequence_equals_manual_steps(tmp_path):
    config = dict(e2vid.e2vid_config(recurrent_block="convgru", norm="none", decoder="upsample_conv", **TINY))
    model = torch_e2vid(config, seed=5)
    stored = {"num_bins": 3, "skip_type": "sum", "recurrent_block_type": "convgru", "num_encoders": 2,
              "base_num_channels": 4, "num_residual_blocks": 1, "use_upsample_conv": True, "norm": None}
    save_published(model, tmp_path / "gru.pth.tar", "E2VIDRecurrent", stored, nested=True)
    assert dict(convert.convert_checkpoint(tmp_path / "gru.pth.tar", tmp_path / "gru")) == config
    module, variables = e2vid.load_pretrained(tmp_path / "gru")
    torch.manual_seed(6)
    windows = torch.randn(3, 1, 3, 8, 8)
    step = jax.jit(module.apply)
    torch_states, state, manual = None, None, []
    with torch.no_grad():
        for window in windows:
            torch_image, torch_states = model.unetrecurrent(window, torch_states)
            image, state = step(variables, to_nhwc(window), state)
            assert max_diff(image, torch_image) <= TOLERANCE
            manual.append(image)
    assert [h.shape for h in state] == [(1, 4, 4, 8), (1, 2, 2, 16)]
    images, final = e2vid.run_sequence(module, variables, jnp.stack([to_nhwc(w) for w in windows]))
    np.testing.assert_allclose(images, jnp.stack(manual), atol=1e-6)
    for a, b in zip(final, state):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_unknown_and_missing_keys_are_listed(lightweight):
    model, *_ = lightweight
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    del state_dict["unetrecurrent.pred.norm_layer.running_var"]
    state_dict["unetrecurrent.decoders.0.extra_layer.weight"] = np.zeros(3, np.float32)
    with pytest.raises(convert.CheckpointConversionError) as error:
        convert.convert_state_dict("E2VIDRecurrent", PUBLISHED_LIGHTWEIGHT_CONFIG, state_dict)
    message = str(error.value)
    assert "unknown keys ['decoders.0.extra_layer.weight']" in message
    assert "missing keys ['pred.norm_layer.running_var']" in message


def test_stored_config_is_checked_against_tensor_shapes(lightweight):
    model, *_ = lightweight
    state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
    stored = dict(PUBLISHED_LIGHTWEIGHT_CONFIG, num_encoders=4, use_upsample_conv=True)
    with pytest.raises(convert.CheckpointConversionError,
                       match=r"decoder: stored 'upsample_conv', tensors say 'transposed'; "
                             r"num_encoders: stored 4, tensors say 3"):
        convert.convert_state_dict("E2VIDRecurrent", stored, state_dict)
    with pytest.raises(convert.CheckpointConversionError, match="arch 'E2VID' but its state_dict keys start"):
        convert.convert_state_dict("E2VID", None, state_dict)
    # Unprefixed keys convert too (the config then comes from the shapes alone).
    unprefixed = {k.split(".", 1)[1]: v for k, v in state_dict.items()}
    config, _ = convert.convert_state_dict(None, None, unprefixed)
    assert dict(config) == LIGHTWEIGHT


def test_bad_inputs_give_clear_errors(lightweight, tmp_path):
    _, _, module, variables, _ = lightweight
    with pytest.raises(e2vid.E2VIDInputError, match=r"multiples of 2\*\*num_encoders = 8; use pad_to_multiple"):
        module.apply(variables, jnp.zeros((1, 30, 24, 5)), None)
    with pytest.raises(e2vid.E2VIDInputError, match="num_bins=5"):
        module.apply(variables, jnp.zeros((1, 32, 24, 4)), None)
    with pytest.raises(e2vid.E2VIDInputError, match="recurrent state"):
        module.apply(variables, jnp.zeros((1, 32, 24, 5)), e2vid.initial_state(module.config, 1, 16, 16))
    with pytest.raises(e2vid.E2VIDConfigError, match="norm='GN'"):
        e2vid.e2vid_config(norm="GN")
    with pytest.raises(e2vid.E2VIDConfigError, match="unknown E2VID config field"):
        e2vid.e2vid_config(channels=3)
    with pytest.raises(e2vid.E2VIDCheckpointError, match="e2vid_config.json is missing"):
        e2vid.load_pretrained(tmp_path)
    with pytest.raises(e2vid.E2VIDCheckpointError, match="do not match the E2VID config"):
        e2vid.save_pretrained(tmp_path / "bad", e2vid.e2vid_config(num_bins=4), variables)
    assert not (tmp_path / "bad").exists()


def test_save_pretrained_replaces_a_directory_and_round_trips(tmp_path):
    config = e2vid.e2vid_config(**TINY)
    # Random values in the shapes init would give (compiling the random init costs seconds on a CPU).
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(e2vid.abstract_variables(config))
    variables = traverse_util.unflatten_dict({
        path: (rng.uniform(0.5, 1.5, a.shape) if path[-1] == "var" else rng.normal(0.0, 0.3, a.shape)).astype(
            np.float32) for path, a in flat.items()})
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "stale.txt").write_text("old")
    e2vid.save_pretrained(tmp_path / "model", config, variables)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging leftovers
    assert not (tmp_path / "model" / "stale.txt").exists()
    loaded_module, loaded = e2vid.load_pretrained(tmp_path / "model")
    assert dict(loaded_module.config) == dict(config)
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)
    voxels = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 8, 3))
    state = e2vid.initial_state(config, 2, 4, 8)
    assert [tuple(x.shape) for x in jax.tree_util.tree_leaves(state)] == [(2, 2, 4, 8)] * 2 + [(2, 1, 2, 16)] * 2
    image, new_state = jax.jit(loaded_module.apply)(loaded, voxels, state)
    assert image.shape == (2, 4, 8, 1) and bool(jnp.all((image > 0) & (image < 1)))
    # Training mode updates the running statistics.
    train_step = jax.jit(functools.partial(loaded_module.apply, train=True, mutable=["batch_stats"]))
    _, updates = train_step(loaded, voxels, new_state)
    assert not np.allclose(updates["batch_stats"]["decoder_0"]["norm"]["mean"],
                           loaded["batch_stats"]["decoder_0"]["norm"]["mean"])


def test_load_pretrained_rejects_a_config_edited_to_another_base_width(tmp_path):
    config = e2vid.e2vid_config(**TINY)
    variables = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), e2vid.abstract_variables(config))
    e2vid.save_pretrained(tmp_path / "model", config, variables)
    description = tmp_path / "model" / e2vid.CONFIG_FILE
    document = json.loads(description.read_text())
    document["config"]["base_channels"] = 8
    description.write_text(json.dumps(document))
    # Orbax restores the saved 4-channel tensors onto the 8-channel target without complaint; the check must not.
    with pytest.raises(e2vid.E2VIDCheckpointError,
                       match=r"variables: the saved variables do not match e2vid_config\.json \(saved vs expected\): "
                             r".*params/head/conv/kernel: \(5, 5, 3, 4\) vs \(5, 5, 3, 8\)"):
        e2vid.load_pretrained(tmp_path / "model")


def test_command_help_and_missing_torch_message(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--help"])
    assert exit_info.value.code == 0
    assert "python -m anon_jax.convert.e2vid" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails as if it were not installed
    with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
        convert.read_torch_checkpoint(tmp_path / "E2VID_lightweight.pth.tar")
    assert convert.main([str(tmp_path / "x.pth.tar"), str(tmp_path / "out")]) == 2
    assert "pip install torch==2.13.0" in capsys.readouterr().err


def test_model_and_converter_modules_do_not_import_torch():
    code = ("import sys, anon_jax.models.e2vid, anon_jax.convert.e2vid; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_converted_decoder_kernel_reproduces_conv_transpose_exactly():
    weight = torch.randn(6, 4, 5, 5)  # (in, out, kh, kw)
    x = torch.randn(1, 6, 3, 5)
    expected = F.conv_transpose2d(x, weight, stride=2, padding=2, output_padding=1)
    layer = e2vid.DecoderLayer(4, "transposed", "BN")
    params = {"transposed_conv": {"kernel": jnp.asarray(weight.numpy().transpose(2, 3, 1, 0))},
              "norm": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}}
    stats = {"mean": jnp.zeros(4), "var": jnp.full((4,), 1.0 - 1e-5)}  # BN is the identity: (x - 0) / 1
    out = jax.jit(functools.partial(layer.apply, train=False))(
        {"params": params, "batch_stats": {"norm": stats}}, to_nhwc(x))
    assert out.shape == (1, 6, 10, 4)
    assert max_diff(out, torch.relu(expected)) <= 1e-5
