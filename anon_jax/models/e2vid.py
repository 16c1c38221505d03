"""The E2VID family of events-to-video reconstructors (Rebecq et al.) in Flax Linen, NHWC.

UNet and recurrent UNet (ConvLSTM or ConvGRU after each encoder) with explicit recurrent state, a
`lax.scan` sequence runner, E2VID's reflection pad / crop, and Orbax save/load usable without PyTorch.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from anon_jax.files import atomic_directory, atomic_write_text
from anon_jax.models import pretrained
from anon_jax.models.layers import BatchNorm, ConvTransposeX2
from anon_jax.validation import is_positive_int

CONFIG_FILE = "e2vid_config.json"
VARIABLES_DIR = "variables"
CHECKPOINT_FORMAT = "anon_jax.models.e2vid/1"

RECURRENT_BLOCKS = ("convlstm", "convgru")
SKIPS = ("sum", "concat")
NORMS = ("BN", "IN", "none")
DECODERS = ("transposed", "upsample_conv")

# E2VID_lightweight (v1.1): the published checkpoint's settings.
_LIGHTWEIGHT_FIELDS = dict(
    num_bins=5,
    recurrent=True,
    recurrent_block="convlstm",
    num_encoders=3,
    base_channels=32,
    num_residual_blocks=2,
    skip="sum",
    norm="BN",
    decoder="transposed",
)

# PyTorch's default conv init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class E2VIDConfigError(ValueError):
    """An E2VID configuration holds a value the network cannot be built from."""


class E2VIDInputError(ValueError):
    """Voxels or recurrent state passed to an E2VID network have the wrong shape."""


class E2VIDCheckpointError(ValueError):
    """A saved E2VID directory is missing, malformed or does not match its configuration."""


def e2vid_config(**overrides) -> ml_collections.ConfigDict:
    """The E2VID_lightweight configuration with `overrides` applied (checked)."""
    unknown = sorted(set(overrides) - set(_LIGHTWEIGHT_FIELDS))
    if unknown:
        raise E2VIDConfigError(f"unknown E2VID config field(s) {unknown}; known: {sorted(_LIGHTWEIGHT_FIELDS)}.")
    config = ml_collections.ConfigDict({**_LIGHTWEIGHT_FIELDS, **overrides})
    check_config(config)
    return config


LIGHTWEIGHT = ml_collections.FrozenConfigDict(_LIGHTWEIGHT_FIELDS)



def check_config(config) -> None:
    """Raises E2VIDConfigError naming the first field that is missing or out of range."""
    missing = [field for field in _LIGHTWEIGHT_FIELDS if field not in config]
    if missing:
        raise E2VIDConfigError(f"E2VID config lacks field(s) {missing}; start from e2vid_config(...).")
    for field in ("num_bins", "num_encoders", "base_channels"):
        if not is_positive_int(config[field]):
            raise E2VIDConfigError(f"E2VID config {field}={config[field]!r} must be a positive integer.")
    blocks = config.num_residual_blocks
    if not (isinstance(blocks, (int, np.integer)) and not isinstance(blocks, bool) and blocks >= 0):
        raise E2VIDConfigError(f"E2VID config num_residual_blocks={blocks!r} must be an integer >= 0.")
    if not isinstance(config.recurrent, bool):
        raise E2VIDConfigError(f"E2VID config recurrent={config.recurrent!r} must be True or False.")
    for field, allowed in (("recurrent_block", RECURRENT_BLOCKS), ("skip", SKIPS), ("norm", NORMS),
                           ("decoder", DECODERS)):
        if config[field] not in allowed:
            raise E2VIDConfigError(f"E2VID config {field}={config[field]!r}: use one of {allowed}.")


def _frozen(config) -> ml_collections.FrozenConfigDict:
    if isinstance(config, ml_collections.FrozenConfigDict):
        return config
    return ml_collections.FrozenConfigDict(config)


def state_shapes(config, batch: int, height: int, width: int) -> tuple:
    """Shapes of the recurrent state: per encoder (h, c) for ConvLSTM, h for ConvGRU; () if not recurrent."""
    if not config.recurrent:
        return ()
    shapes = []
    for i in range(config.num_encoders):
        scale = 2 ** (i + 1)
        shape = (batch, height // scale, width // scale, config.base_channels * scale)
        shapes.append((shape, shape) if config.recurrent_block == "convlstm" else shape)
    return tuple(shapes)


def initial_state(config, batch: int, height: int, width: int):
    """Zero recurrent state for voxels of (batch, height, width); None for the non-recurrent UNet."""
    check_config(config)
    if not config.recurrent:
        return None
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)
    return jax.tree_util.tree_map(
        lambda shape: jnp.zeros(shape, jnp.float32), state_shapes(config, batch, height, width), is_leaf=is_shape
    )


def _norm(kind: str, train: bool, dtype: Any, name: str, *, instance_running_stats: bool = True):
    if kind == "BN":
        return BatchNorm(use_running_average=not train, dtype=dtype, name=name)
    if kind == "IN":
        return InstanceNorm(track_running_stats=instance_running_stats, use_running_average=not train, dtype=dtype,
                            name=name)
    return lambda x: x


class InstanceNorm(nn.Module):
    """PyTorch InstanceNorm2d without affine parameters, over the spatial axes of NHWC maps.

    E2VID's conv layers build it with `track_running_stats=True`: training normalises each map by its own
    statistics and blends their batch mean into running statistics (unbiased variance, momentum 0.1), and
    evaluation normalises with the running statistics, as PyTorch does. Without running statistics (E2VID's
    residual blocks) every call uses the per-map statistics and the layer holds no variables. Statistics are
    computed and kept in float32; the output has `dtype`.
    """

    track_running_stats: bool = True
    use_running_average: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        x = x.astype(jnp.float32)
        if self.track_running_stats:
            running_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
            running_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        if self.track_running_stats and self.use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            mean = jnp.mean(x, axis=(1, 2), keepdims=True)
            var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
            if self.track_running_stats and not self.is_initializing():
                count = x.shape[1] * x.shape[2]
                unbiased = var * (count / max(count - 1, 1))
                running_mean.value = (1 - self.momentum) * running_mean.value + self.momentum * jnp.mean(
                    mean, axis=(0, 1, 2))
                running_var.value = (1 - self.momentum) * running_var.value + self.momentum * jnp.mean(
                    unbiased, axis=(0, 1, 2))
        return ((x - mean) * jax.lax.rsqrt(var + self.epsilon)).astype(self.dtype)


def _conv(features: int, kernel: int, stride: int, use_bias: bool, dtype: Any, name: str, **kwargs) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=use_bias, kernel_init=kwargs.pop("kernel_init", torch_default_kernel_init),
                   dtype=dtype, name=name, **kwargs)


class ConvLayer(nn.Module):
    """Conv (bias only without BatchNorm) -> optional BN / IN -> optional ReLU (E2VID's ConvLayer)."""

    features: int
    kernel_size: int
    stride: int = 1
    norm: str = "none"
    relu: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = _conv(self.features, self.kernel_size, self.stride, self.norm != "BN", self.dtype, "conv")(x)
        x = _norm(self.norm, train, self.dtype, "norm")(x)
        return nn.relu(x) if self.relu else x


class GateConv(nn.Module):
    """The ConvLSTM's 3x3 gate conv on concat([x, h]) (parameters named as nn.Conv's).

    With h = None (a zero state) only the input half of the kernel is applied: the hidden half multiplies
    zeros, so skipping it gives the same result at about half the cost (every stateless window). Computes in
    `dtype` with float32 parameters.
    """

    features: int
    hidden_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, hidden):
        in_features = x.shape[-1] + self.hidden_features
        kernel = self.param("kernel", torch_default_kernel_init, (3, 3, in_features, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        x = x.astype(self.dtype)
        if hidden is None:
            inputs, kernel = x, kernel[:, :, :x.shape[-1]]
        else:
            inputs = jnp.concatenate([x, hidden.astype(self.dtype)], axis=-1)
        out = jax.lax.conv_general_dilated(inputs, kernel.astype(self.dtype), (1, 1), ((1, 1), (1, 1)),
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + bias.astype(self.dtype)


class ConvLSTM(nn.Module):
    """ConvLSTM cell: one 3x3 conv on concat([x, h]) gives the gates in the order i, f, o, g; state None = zeros.

    The gate conv computes in `dtype`; the state update and the state are float32, since the cell accumulates
    over the whole sequence (and a scan needs one carry dtype). The output is the hidden state in `dtype`.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, state):
        hidden, cell = state if state is not None else (None, None)
        gates = GateConv(4 * self.features, self.features, dtype=self.dtype, name="gates")(x, hidden)
        in_gate, forget_gate, out_gate, cell_gate = jnp.split(gates.astype(jnp.float32), 4, axis=-1)
        cell = nn.sigmoid(in_gate) * jnp.tanh(cell_gate) + (0 if cell is None else nn.sigmoid(forget_gate) * cell)
        hidden = nn.sigmoid(out_gate) * jnp.tanh(cell)
        return hidden.astype(self.dtype), (hidden, cell)


class ConvGRU(nn.Module):
    """ConvGRU cell: reset, update and output 3x3 convs (orthogonal init, zero bias as in E2VID).

    The convs compute in `dtype`; the state and its update are float32, as in ConvLSTM.
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, hidden):
        if hidden is None:
            hidden = jnp.zeros(x.shape[:-1] + (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        gate = functools.partial(_conv, self.features, 3, 1, True, self.dtype,
                                 kernel_init=nn.initializers.orthogonal())
        stacked = jnp.concatenate([x, hidden.astype(self.dtype)], axis=-1)
        update = nn.sigmoid(gate("update_gate")(stacked).astype(jnp.float32))
        reset = nn.sigmoid(gate("reset_gate")(stacked))
        candidate = jnp.tanh(gate("out_gate")(jnp.concatenate([x, hidden.astype(self.dtype) * reset], axis=-1)))
        hidden = hidden * (1 - update) + candidate.astype(jnp.float32) * update
        return hidden.astype(self.dtype), hidden


class RecurrentConvLayer(nn.Module):
    """Strided ConvLayer followed by a ConvLSTM / ConvGRU; the output is the new hidden state."""

    features: int
    norm: str
    recurrent_block: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, state, train: bool):
        x = ConvLayer(self.features, 5, 2, self.norm, dtype=self.dtype, name="conv")(x, train)
        cell = ConvLSTM if self.recurrent_block == "convlstm" else ConvGRU
        return cell(self.features, dtype=self.dtype, name=self.recurrent_block)(x, state)


class ResidualBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm -> + input -> ReLU (post-activation)."""

    norm: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        features = x.shape[-1]
        use_bias = self.norm != "BN"
        # E2VID's residual blocks build InstanceNorm without running statistics.
        out = _conv(features, 3, 1, use_bias, self.dtype, "conv1")(x)
        out = nn.relu(_norm(self.norm, train, self.dtype, "norm1", instance_running_stats=False)(out))
        out = _conv(features, 3, 1, use_bias, self.dtype, "conv2")(out)
        out = _norm(self.norm, train, self.dtype, "norm2", instance_running_stats=False)(out)
        return nn.relu(out + x.astype(self.dtype))


def upsample_bilinear_x2(x):
    """Bilinear x2 upsampling of NHWC maps with PyTorch's align_corners=False semantics.

    Output pixel 2i samples the input at i - 1/4 and 2i + 1 at i + 1/4; positions outside the map clamp
    to the border pixel, as PyTorch clamps the source coordinate.
    """
    for axis in (1, 2):
        first = jax.lax.slice_in_dim(x, 0, 1, axis=axis)
        last = jax.lax.slice_in_dim(x, x.shape[axis] - 1, x.shape[axis], axis=axis)
        previous = jnp.concatenate([first, jax.lax.slice_in_dim(x, 0, x.shape[axis] - 1, axis=axis)], axis=axis)
        following = jnp.concatenate([jax.lax.slice_in_dim(x, 1, x.shape[axis], axis=axis), last], axis=axis)
        even = 0.75 * x + 0.25 * previous
        odd = 0.75 * x + 0.25 * following
        interleaved = jnp.stack([even, odd], axis=axis + 1)
        x = interleaved.reshape(x.shape[:axis] + (2 * x.shape[axis],) + x.shape[axis + 1:])
    return x


class DecoderLayer(nn.Module):
    """x2 upsampling: transposed conv k5 s2 p2 output_padding 1, or bilinear x2 + conv k5; norm; ReLU."""

    features: int
    decoder: str
    norm: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        use_bias = self.norm != "BN"
        if self.decoder == "transposed":
            x = ConvTransposeX2(self.features, use_bias=use_bias, kernel_init=torch_default_kernel_init,
                                dtype=self.dtype, name="transposed_conv")(x)
        else:
            x = _conv(self.features, 5, 1, use_bias, self.dtype, "conv")(upsample_bilinear_x2(x))
        return nn.relu(_norm(self.norm, train, self.dtype, "norm")(x))


def _check_voxels(voxels, config) -> None:
    multiple = 2 ** config.num_encoders
    if voxels.ndim != 4 or voxels.shape[-1] != config.num_bins:
        raise E2VIDInputError(
            f"voxels of shape {voxels.shape}: expected (batch, height, width, {config.num_bins}) NHWC, "
            f"num_bins={config.num_bins} as the model's config.")
    height, width = voxels.shape[1:3]
    if height % multiple or width % multiple:
        raise E2VIDInputError(
            f"voxels of {height}x{width}: height and width must be multiples of 2**num_encoders = {multiple}; "
            f"use pad_to_multiple(voxels, {multiple}) and crop_to(images, {height}, {width}).")


def _check_state(state, config, voxels) -> None:
    expected = state_shapes(config, voxels.shape[0], voxels.shape[1], voxels.shape[2])
    expected_leaves = [leaf for pair in expected for leaf in (pair if isinstance(pair[0], tuple) else (pair,))]
    got_leaves = [tuple(leaf.shape) for leaf in jax.tree_util.tree_leaves(state)]
    if len(state) != len(expected) or got_leaves != expected_leaves:
        raise E2VIDInputError(
            f"recurrent state with arrays of shapes {got_leaves} does not fit voxels {tuple(voxels.shape)}: "
            f"expected {expected} (per encoder (h, c) for ConvLSTM, h for ConvGRU); pass None to start "
            "from zeros.")


class E2VID(nn.Module):
    """E2VID UNet / recurrent UNet: `image, new_state = apply(variables, voxels, state, train=False)`.

    voxels (B, H, W, num_bins) with H, W multiples of 2**num_encoders; image (B, H, W, 1) in (0, 1); state
    is a tuple over encoders of (h, c) (ConvLSTM) or h (ConvGRU), None meaning zeros; the non-recurrent
    UNet ignores it and returns None. train=True normalises with batch statistics and updates the running
    ones (apply with mutable=["batch_stats"]). Layers compute in `dtype`; parameters, batch statistics, the
    recurrent state and the image are float32.
    """

    config: Any
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, voxels, state=None, train: bool = False):
        config = self.config
        check_config(config)
        _check_voxels(voxels, config)
        voxels = jnp.asarray(voxels, jnp.float32)
        if config.recurrent and state is not None:
            _check_state(state, config, voxels)
        base, levels = config.base_channels, config.num_encoders

        def skip(x, skipped):
            return x + skipped if config.skip == "sum" else jnp.concatenate([x, skipped], axis=-1)

        # The head never has a norm layer, even in BN configurations.
        x = head = ConvLayer(base, 5, 1, "none", dtype=self.dtype, name="head")(voxels, train)
        skips, new_state = [], []
        for i in range(levels):
            features = base * 2 ** (i + 1)
            if config.recurrent:
                layer_state = None if state is None else state[i]
                x, encoder_state = RecurrentConvLayer(features, config.norm, config.recurrent_block,
                                                      dtype=self.dtype, name=f"encoder_{i}")(x, layer_state, train)
                new_state.append(encoder_state)
            else:
                x = ConvLayer(features, 5, 2, config.norm, dtype=self.dtype, name=f"encoder_{i}")(x, train)
            skips.append(x)
        for i in range(config.num_residual_blocks):
            x = ResidualBlock(config.norm, dtype=self.dtype, name=f"resblock_{i}")(x, train)
        for i in range(levels):
            x = DecoderLayer(base * 2 ** (levels - 1 - i), config.decoder, config.norm, dtype=self.dtype,
                             name=f"decoder_{i}")(skip(x, skips[levels - 1 - i]), train)
        logits = ConvLayer(1, 1, 1, config.norm, relu=False, dtype=self.dtype, name="pred")(skip(x, head), train)
        return nn.sigmoid(logits.astype(jnp.float32)), (tuple(new_state) if config.recurrent else None)


@functools.partial(jax.jit, static_argnums=0)
def _scan_sequence(module, variables, voxel_sequence, state):
    def step(carry, voxels):
        image, new_state = module.apply(variables, voxels, carry, train=False)
        return new_state, image

    final_state, images = jax.lax.scan(step, state, voxel_sequence)
    return images, final_state


def run_sequence(module: E2VID, variables, voxel_sequence, state=None):
    """Runs (T, B, H, W, num_bins) windows in order with carried state (evaluation mode).

    Returns (images (T, B, H, W, 1), final_state); `state=None` starts from zeros.
    """
    module = module.clone(config=_frozen(module.config))  # hashable, so the compiled scan is reused
    voxel_sequence = jnp.asarray(voxel_sequence, jnp.float32)
    if voxel_sequence.ndim != 5:
        raise E2VIDInputError(
            f"voxel_sequence of shape {voxel_sequence.shape}: expected (time, batch, height, width, bins).")
    if state is None:
        state = initial_state(module.config, *voxel_sequence.shape[1:4])
    return _scan_sequence(module, variables, voxel_sequence, state)


def _pad_amounts(size: int, multiple: int) -> tuple[int, int]:
    extra = -size % multiple
    return (extra + 1) // 2, extra // 2


def pad_to_multiple(voxels, multiple: int):
    """Reflection-pads the H, W axes (-3, -2) up to multiples of `multiple`, as E2VID's CropParameters.

    Top/left get ceil(d/2), bottom/right floor(d/2) (PyTorch ReflectionPad2d: the border is not repeated).
    """
    if not is_positive_int(multiple):
        raise E2VIDInputError(f"multiple={multiple!r} must be a positive integer (2**num_encoders).")
    height, width = voxels.shape[-3], voxels.shape[-2]
    pads = [(0, 0)] * voxels.ndim
    pads[-3], pads[-2] = _pad_amounts(height, multiple), _pad_amounts(width, multiple)
    if max(pads[-3]) >= height or max(pads[-2]) >= width:
        raise E2VIDInputError(
            f"a {height}x{width} map is too small to reflection-pad to a multiple of {multiple} "
            "(each pad must be smaller than the side).")
    return jnp.pad(voxels, pads, mode="reflect")


def crop_to(images, height: int, width: int):
    """Inverse of pad_to_multiple on axes (-3, -2): the central (height, width) window.

    The offset ceil(d/2) equals E2VID's `floor(Hc/2) - floor(H/2)` whenever the padding multiple is even.
    """
    padded_height, padded_width = images.shape[-3], images.shape[-2]
    if padded_height < height or padded_width < width:
        raise E2VIDInputError(f"cannot crop {padded_height}x{padded_width} images to a larger {height}x{width}.")
    top = (padded_height - height + 1) // 2
    left = (padded_width - width + 1) // 2
    return images[..., top:top + height, left:left + width, :]


def abstract_variables(config) -> dict:
    """Shapes and dtypes of the variables of E2VID(config), without allocating them."""
    module = E2VID(_frozen(config))
    side = 2 ** config.num_encoders
    voxels = jax.ShapeDtypeStruct((1, side, side, config.num_bins), jnp.float32)
    return flax.core.unfreeze(jax.eval_shape(lambda v: module.init(jax.random.PRNGKey(0), v), voxels))


def save_pretrained(directory: str | os.PathLike, config, variables) -> None:
    """Writes `directory` with an Orbax checkpoint of `variables` and e2vid_config.json (atomically)."""
    check_config(config)
    mismatches = pretrained.shape_mismatches(abstract_variables(config), variables)
    if mismatches:
        raise E2VIDCheckpointError(f"variables do not match the E2VID config (given vs expected): {mismatches}.")
    with atomic_directory(directory) as staging:
        pretrained.save_tree(staging / VARIABLES_DIR, variables)
        document = {"format": CHECKPOINT_FORMAT, "config": {field: config[field] for field in _LIGHTWEIGHT_FIELDS}}
        atomic_write_text(staging / CONFIG_FILE, json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_config(directory: str | os.PathLike) -> ml_collections.ConfigDict:
    """The configuration stored in a save_pretrained directory."""
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise E2VIDCheckpointError(
            f"{path} is missing: {directory} is not an E2VID directory written by save_pretrained "
            "(convert a PyTorch checkpoint with `python -m anon_jax.convert.e2vid IN.pth.tar OUT_DIR`).")
    try:
        document = json.loads(path.read_text())
        fields = document["config"]
        if document.get("format") != CHECKPOINT_FORMAT:
            raise E2VIDCheckpointError(f"{path}: format {document.get('format')!r}, expected {CHECKPOINT_FORMAT!r}.")
        return e2vid_config(**fields)
    except (json.JSONDecodeError, KeyError, TypeError, E2VIDConfigError) as error:
        raise E2VIDCheckpointError(f"{path}: not a valid E2VID configuration ({error}).") from error


def load_pretrained(directory: str | os.PathLike, *, dtype: Any = jnp.float32) -> tuple[E2VID, dict]:
    """(module computing in `dtype`, float32 variables) from a save_pretrained directory; no PyTorch needed."""
    config = load_config(directory)
    variables = pretrained.restore_saved(pathlib.Path(directory).absolute() / VARIABLES_DIR,
                                         abstract_variables(config), what="variables", config_file=CONFIG_FILE,
                                         error_class=E2VIDCheckpointError)
    return E2VID(_frozen(config), dtype=dtype), variables


def parameter_count(variables) -> int:
    """Number of trainable parameters (the "params" collection)."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(variables["params"])))

