"""Event-voxel anonymizers in Flax Linen, NHWC: the published ICCV'23 ANmodel and a residual U-Net (also the
inversion attacker's inverter), their configuration, and Orbax save/load with the voxel preprocessing a
deployment must repeat.
"""

from __future__ import annotations

import json
import math
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
from anon_jax.models.layers import max_pool_2x2_stride1, patch_conv
from anon_jax.validation import is_positive_int

CONFIG_FILE = "anonymizer.json"
PARAMS_DIR = "params"
CHECKPOINT_FORMAT = "anon_jax.models.anonymizer/1"

KINDS = ("published", "residual_unet")
PARTITION_MODES = ("time", "count")
VOXEL_FIELDS = ("num_bins", "height", "width", "partition_mode", "chunk_duration", "chunk_count")


class AnonymizerConfigError(ValueError):
    """An anonymizer configuration or voxel description holds a value the network cannot be built from."""


class AnonymizerInputError(ValueError):
    """Voxels passed to an anonymizer have the wrong shape."""


class AnonymizerCheckpointError(ValueError):
    """A saved anonymizer directory is missing, malformed or does not match its configuration."""


def _default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.kind = "published"  # "published" (ICCV'23 ANmodel, output in (0, 1)) or "residual_unet" (input + U-Net)
    config.num_bins = 5  # voxel time bins: the channels in and out
    config.base_features = 32  # residual_unet only: features at full resolution, doubled at each level
    config.num_levels = 2  # residual_unet only: 2x2 max-pool steps; H and W must be multiples of 2**num_levels
    return config


CONFIG_FIELDS = tuple(_default_config().keys())



def check_config(config) -> None:
    """Raises AnonymizerConfigError naming the first field that is missing or out of range."""
    missing = [field for field in CONFIG_FIELDS if field not in config]
    if missing:
        raise AnonymizerConfigError(f"anonymizer config lacks field(s) {missing}; start from anonymizer_config(...).")
    if config.kind not in KINDS:
        raise AnonymizerConfigError(f"anonymizer config kind={config.kind!r}: use one of {KINDS}.")
    for field in ("num_bins", "base_features", "num_levels"):
        if not is_positive_int(config[field]):
            raise AnonymizerConfigError(f"anonymizer config {field}={config[field]!r} must be a positive integer.")


def anonymizer_config(**overrides) -> ml_collections.ConfigDict:
    """The published anonymizer's configuration with `overrides` applied (checked)."""
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise AnonymizerConfigError(f"unknown anonymizer config field(s) {unknown}; known: {list(CONFIG_FIELDS)}.")
    config = _default_config()
    config.update(overrides)
    check_config(config)
    return config


# PyTorch's default Conv2d init: kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights
# (variance 1/(3 fan_in)); the bias is drawn from the same bound, which Flax's bias_init cannot see, hence fan_in.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default conv bias init."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# Convs reading at most this many channels run as a product over patches (layers.patch_conv): measured faster
# here for 5 and 16 input channels, slower for 64.
PATCH_CONV_MAX_IN_FEATURES = 16


def torch_conv3x3(features: int, in_features: int, *, pad: int = 1, kernel_init=torch_default_kernel_init,
                  dtype: Any, name: str) -> nn.Conv:
    """A stride-1 3x3 conv with bias, PyTorch's default init and symmetric zero padding `pad`, computing in `dtype`;
    narrow inputs run as patch products."""
    return nn.Conv(features, (3, 3), padding=((pad, pad), (pad, pad)), kernel_init=kernel_init,
                   bias_init=torch_default_bias_init(in_features * 9), dtype=dtype, name=name,
                   conv_general_dilated=patch_conv if in_features <= PATCH_CONV_MAX_IN_FEATURES else None)


def _check_voxels(voxels, num_bins: int, name: str) -> None:
    if voxels.ndim != 4 or voxels.shape[-1] != num_bins:
        raise AnonymizerInputError(
            f"{name} expects voxels of shape (batch, height, width, {num_bins}) (NHWC), got {tuple(voxels.shape)}; "
            "transpose (bins, H, W) grids to (H, W, bins) and add a batch axis.")


class PublishedAnonymizer(nn.Module):
    """The ICCV'23 ANmodel: conv-ReLU-maxpool(2, stride 1) twice, two convs, sigmoid; no skips.

    Each stride-1 max-pool shrinks H and W by one and the last conv's padding of 2 grows them back by two, so the
    anonymised grid has the input's shape, with values in (0, 1). `dtype` is the compute dtype (parameters and
    output are float32).
    """

    num_bins: int = 5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, voxels):
        _check_voxels(voxels, self.num_bins, "PublishedAnonymizer")
        if min(voxels.shape[1:3]) < 3:
            raise AnonymizerInputError(
                f"PublishedAnonymizer needs height and width >= 3 (two 2x2 stride-1 max-pools), got "
                f"{voxels.shape[1]}x{voxels.shape[2]}.")
        x = nn.relu(torch_conv3x3(64, self.num_bins, dtype=self.dtype, name="encoder_conv1")(voxels))
        x = max_pool_2x2_stride1(x)
        x = nn.relu(torch_conv3x3(16, 64, dtype=self.dtype, name="encoder_conv2")(x))
        x = max_pool_2x2_stride1(x)
        # The original's Upsample(scale_factor=1) layers are identities and hold no parameters.
        x = nn.relu(torch_conv3x3(64, 16, dtype=self.dtype, name="decoder_conv1")(x))
        x = torch_conv3x3(self.num_bins, 64, pad=2, dtype=self.dtype, name="decoder_conv2")(x)
        return nn.sigmoid(x.astype(jnp.float32))


class ConvPair(nn.Module):
    """Two conv3x3 + ReLU layers, the U-Net's block at one resolution."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(torch_conv3x3(self.features, x.shape[-1], dtype=self.dtype, name="conv1")(x))
        return nn.relu(torch_conv3x3(self.features, self.features, dtype=self.dtype, name="conv2")(x))


class ResidualUNet(nn.Module):
    """Input plus a plain U-Net's output (max-pool down, transposed conv up, concatenated skips, no normalisation).

    The final 1x1 conv starts at zero, so the network starts as the identity; without normalisation layers it has
    parameters only (no batch_stats). H and W must be multiples of 2**num_levels. The U-Net computes in `dtype`;
    the residual is added to the input in float32, so the identity path loses no precision.
    """

    out_channels: int
    base_features: int = 32
    num_levels: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, voxels):
        _check_voxels(voxels, self.out_channels, "ResidualUNet")
        multiple = 2**self.num_levels
        height, width = voxels.shape[1:3]
        if height % multiple or width % multiple:
            raise AnonymizerInputError(
                f"ResidualUNet with num_levels={self.num_levels} needs height and width divisible by {multiple}, "
                f"got {height}x{width}; choose a voxel size that is a multiple of {multiple} or fewer levels.")
        skips = []
        x = voxels
        for level in range(self.num_levels):
            x = ConvPair(self.base_features * 2**level, dtype=self.dtype, name=f"down{level}")(x)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        x = ConvPair(self.base_features * 2**self.num_levels, dtype=self.dtype, name="bottleneck")(x)
        for level in reversed(range(self.num_levels)):
            features = self.base_features * 2**level
            x = nn.ConvTranspose(features, (2, 2), strides=(2, 2), padding="VALID",
                                 kernel_init=torch_default_kernel_init,
                                 bias_init=torch_default_bias_init(x.shape[-1] * 4), dtype=self.dtype,
                                 name=f"up{level}")(x)
            x = ConvPair(features, dtype=self.dtype, name=f"merge{level}")(jnp.concatenate([x, skips[level]], axis=-1))
        residual = nn.Conv(self.out_channels, (1, 1), kernel_init=nn.initializers.zeros,
                           bias_init=nn.initializers.zeros, dtype=self.dtype, name="residual")(x)
        return voxels.astype(jnp.float32) + residual.astype(jnp.float32)


def build_anonymizer(config, *, dtype: Any = jnp.float32) -> nn.Module:
    """The Linen module described by an anonymizer config, computing in `dtype` (parameters are float32)."""
    check_config(config)
    if config.kind == "published":
        return PublishedAnonymizer(num_bins=config.num_bins, dtype=dtype)
    return ResidualUNet(out_channels=config.num_bins, base_features=config.base_features,
                        num_levels=config.num_levels, dtype=dtype)


def check_voxel_settings(voxel, config) -> dict:
    """The voxel preprocessing description as plain JSON values; AnonymizerConfigError names a bad field."""
    if not isinstance(voxel, dict):
        raise AnonymizerConfigError(f"voxel settings must be a dict with keys {list(VOXEL_FIELDS)}, got {voxel!r}.")
    missing, unknown = sorted(set(VOXEL_FIELDS) - set(voxel)), sorted(set(voxel) - set(VOXEL_FIELDS))
    if missing or unknown:
        raise AnonymizerConfigError(
            f"voxel settings need exactly the keys {list(VOXEL_FIELDS)}; missing {missing}, unknown {unknown}.")
    for field in ("num_bins", "height", "width"):
        if not is_positive_int(voxel[field]):
            raise AnonymizerConfigError(f"voxel {field}={voxel[field]!r} must be a positive integer.")
    if voxel["num_bins"] != config.num_bins:
        raise AnonymizerConfigError(
            f"voxel num_bins={voxel['num_bins']} differs from the anonymizer's num_bins={config.num_bins}.")
    if config.kind == "residual_unet" and (voxel["height"] % 2**config.num_levels
                                           or voxel["width"] % 2**config.num_levels):
        raise AnonymizerConfigError(
            f"voxel height x width {voxel['height']}x{voxel['width']} must be multiples of "
            f"{2**config.num_levels} for a residual_unet with num_levels={config.num_levels}.")
    mode, duration, count = voxel["partition_mode"], voxel["chunk_duration"], voxel["chunk_count"]
    if mode not in PARTITION_MODES:
        raise AnonymizerConfigError(f"voxel partition_mode={mode!r}: use one of {PARTITION_MODES}.")
    duration_ok = (isinstance(duration, (int, float, np.integer, np.floating)) and not isinstance(duration, bool)
                   and math.isfinite(duration) and duration > 0)
    if (duration is not None or mode == "time") and not duration_ok:
        raise AnonymizerConfigError(f"voxel chunk_duration={duration!r} must be a positive number (file time units).")
    if (count is not None or mode == "count") and not is_positive_int(count):
        raise AnonymizerConfigError(f"voxel chunk_count={count!r} must be a positive integer (events per chunk).")
    return {"num_bins": int(voxel["num_bins"]), "height": int(voxel["height"]), "width": int(voxel["width"]),
            "partition_mode": mode, "chunk_duration": None if duration is None else float(duration),
            "chunk_count": None if count is None else int(count)}


def abstract_params(config) -> dict:
    """Shapes and dtypes of the parameters of build_anonymizer(config), without allocating them."""
    module = build_anonymizer(config)
    side = max(3, 2**config.num_levels) if config.kind == "residual_unet" else 3
    voxels = jax.ShapeDtypeStruct((1, side, side, config.num_bins), jnp.float32)
    variables = jax.eval_shape(lambda v: module.init(jax.random.PRNGKey(0), v), voxels)
    return flax.core.unfreeze(variables)["params"]


def save_pretrained(directory: str | os.PathLike, config, params, *, voxel: dict) -> None:
    """Writes `directory` (atomically): an Orbax checkpoint of `params` and anonymizer.json (config + voxel)."""
    check_config(config)
    voxel = check_voxel_settings(voxel, config)
    mismatches = pretrained.shape_mismatches(abstract_params(config), params)
    if mismatches:
        raise AnonymizerCheckpointError(
            f"params do not match the anonymizer config (given vs expected): {mismatches}. Pass the 'params' "
            "collection itself, not the whole variables dict.")
    with atomic_directory(directory) as staging:
        pretrained.save_tree(staging / PARAMS_DIR, params)
        document = {"format": CHECKPOINT_FORMAT, "config": {field: config[field] for field in CONFIG_FIELDS},
                    "voxel": voxel}
        atomic_write_text(staging / CONFIG_FILE, json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_settings(directory: str | os.PathLike) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, voxel settings) stored in a save_pretrained directory."""
    path, document = pretrained.read_description(
        directory, CONFIG_FILE, checkpoint_format=CHECKPOINT_FORMAT, what="an anonymizer",
        writer="anon_jax.models.anonymizer.save_pretrained", error_class=AnonymizerCheckpointError)
    try:
        config = anonymizer_config(**document["config"])
        return config, check_voxel_settings(document["voxel"], config)
    except (AttributeError, KeyError, TypeError, AnonymizerConfigError) as error:
        raise AnonymizerCheckpointError(f"{path}: not a valid anonymizer description ({error}).") from error


def load_pretrained(directory: str | os.PathLike, *, dtype: Any = jnp.float32) -> tuple[nn.Module, dict, dict]:
    """(module computing in `dtype`, float32 params, voxel settings) from a save_pretrained directory."""
    config, voxel = load_settings(directory)
    params = pretrained.restore_saved(pathlib.Path(directory).absolute() / PARAMS_DIR, abstract_params(config),
                                      what="parameters", config_file=CONFIG_FILE,
                                      error_class=AnonymizerCheckpointError)
    return build_anonymizer(config, dtype=dtype), params, voxel


def parameter_count(params) -> int:
    """Number of parameters in a params tree."""
    return int(sum(np.prod(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params)))
