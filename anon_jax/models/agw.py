"""AGW ReId network (ReID-Survey's baseline, as privacy-reid trains it): ResNet-50 with non-local blocks, GeM
pooling and a BNNeck head, NHWC. The trunk keeps torchvision's names under "backbone" (non-local blocks beside
them as `nonlocal_layer<stage>_<block>`), so ImageNet weights import through convert/torchvision_resnet.py.
A trained network is saved with the input settings a deployment must repeat (save_pretrained / load_pretrained).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from anon_jax.convert import torchvision_resnet
from anon_jax.files import atomic_directory, atomic_write_text
from anon_jax.models import pretrained, reid
from anon_jax.models.anonymizer import torch_default_bias_init, torch_default_kernel_init
from anon_jax.models.layers import BatchNorm, loop_friendly_conv
from anon_jax.validation import is_positive_int

# AGW's `non_layers`: how many of each stage's last blocks are followed by a non-local block (2 in layer2, 3 in
# layer3: after layer2_2, layer2_3, layer3_3, layer3_4, layer3_5).
AGW_NONLOCAL_BLOCKS = (0, 2, 3, 0)
NONLOCAL_PREFIX = "nonlocal_"


class AGWNetworkError(ValueError):
    """An AGW network was configured with values it cannot be built from."""


class NonLocalBlock(nn.Module):
    """Dot-product non-local block: z = x + BN(W(y)), y_i = sum_j theta_i . phi_j g_j / N over the N = H*W positions.

    theta, phi and g are 1x1 convs with bias to `inter_channels`; W is a 1x1 conv with bias back to the input
    channels. The BN's scale and shift start at 0, so the block is the identity at initialisation. The convs take
    PyTorch's default init (AGW never re-initialises them).
    """

    inter_channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        batch, height, width, channels = x.shape
        positions = height * width

        def embed(name):
            return nn.Conv(self.inter_channels, (1, 1), kernel_init=torch_default_kernel_init,
                           conv_general_dilated=loop_friendly_conv,
                           bias_init=torch_default_bias_init(channels), dtype=self.dtype, name=name)(x)

        theta = embed("theta").reshape(batch, positions, self.inter_channels)
        phi = embed("phi").reshape(batch, positions, self.inter_channels)
        g = embed("g").reshape(batch, positions, self.inter_channels)
        # theta (phi^T g) equals (theta phi^T) g without the (N, N) affinity matrix.
        y = jnp.einsum("bni,bij->bnj", theta, jnp.einsum("bmi,bmj->bij", phi, g)) / positions
        y = y.reshape(batch, height, width, self.inter_channels)
        w_y = nn.Conv(channels, (1, 1), kernel_init=torch_default_kernel_init, conv_general_dilated=loop_friendly_conv,
                      bias_init=torch_default_bias_init(self.inter_channels), dtype=self.dtype, name="w_conv")(y)
        w_y = BatchNorm(use_running_average=not train, scale_init=nn.initializers.zeros,
                        bias_init=nn.initializers.zeros, dtype=self.dtype, name="w_bn")(w_y)
        return x + w_y


def nonlocal_inter_channels(channels: int, one_channel: bool) -> int:
    """Embedding width of a non-local block on `channels`: channels // 2 (the intended reduction ratio 2), or 1.

    AGW computes `reduc_ratio // reduc_ratio` = 1 where it meant `in_channels // reduc_ratio`; `one_channel=True`
    reproduces that.
    """
    return 1 if one_channel else max(channels // 2, 1)


class AGWTrunk(nn.Module):
    """ResNet trunk with non-local blocks after the last `nonlocal_blocks[s]` blocks of stage s (no pooling).

    The stem is conv 7x7/2 -> BN -> maxpool 3x3/2 without the ReLU, as AGW has it (`stem_relu=True` restores
    torchvision's). Returns the last feature map (N, H/16, W/16 with last stride 1, 8 * width * expansion).
    """

    depth: int = 50
    width: int = 64
    last_stride: int = 1
    stem_relu: bool = False
    nonlocal_blocks: Sequence[int] = AGW_NONLOCAL_BLOCKS
    nonlocal_one_channel: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        reid._check_trunk(self.depth, self.width, self.last_stride)
        _check_nonlocal_blocks(self.nonlocal_blocks, self.depth)
        block_cls = reid.BasicBlock if self.depth < 50 else reid.Bottleneck
        x = reid._conv(self.width, 7, 2, self.dtype, "conv1")(x)
        x = reid._batch_norm(train, self.dtype, "bn1")(x)
        if self.stem_relu:
            x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stage_strides = (1, 2, 2, self.last_stride)
        for stage, (num_blocks, stride) in enumerate(zip(reid.STAGE_BLOCKS[self.depth], stage_strides)):
            planes = self.width * 2**stage
            for index in range(num_blocks):
                name = f"layer{stage + 1}_{index}"
                x = block_cls(planes, stride if index == 0 else 1, dtype=self.dtype, name=name)(x, train=train)
                if index >= num_blocks - self.nonlocal_blocks[stage]:
                    inter = nonlocal_inter_channels(x.shape[-1], self.nonlocal_one_channel)
                    x = NonLocalBlock(inter, dtype=self.dtype, name=NONLOCAL_PREFIX + name)(x, train=train)
        return x


def _check_nonlocal_blocks(nonlocal_blocks: Sequence[int], depth: int) -> None:
    stages = reid.STAGE_BLOCKS[depth]
    if (len(nonlocal_blocks) != 4
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in nonlocal_blocks)
            or not all(0 <= n <= blocks for n, blocks in zip(nonlocal_blocks, stages))):
        raise AGWNetworkError(
            f"nonlocal_blocks={tuple(nonlocal_blocks)!r} must give 4 integers, stage s's in [0, {stages}[s]] for "
            f"ResNet-{depth} (AGW: {AGW_NONLOCAL_BLOCKS}).")


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling with one learnable exponent p (shape (1,), as PyTorch's parameter) shared by all channels:
    (mean over H, W of max(x, eps)^p)^(1/p), computed in float32."""

    p_init: float = 3.0
    eps: float = 1e-6

    @nn.compact
    def __call__(self, feature_map):
        p = self.param("p", nn.initializers.constant(self.p_init), (1,), jnp.float32)
        powered = jnp.power(jnp.maximum(feature_map.astype(jnp.float32), self.eps), p)
        return jnp.power(jnp.mean(powered, axis=(1, 2)), 1.0 / p)


class AGWNetwork(nn.Module):
    """AGW: AGWTrunk -> GeM -> BNNeck (BatchNorm without shift, bias-free classifier with N(0, 0.001^2) weights).

    `__call__(x, *, train)` takes NHWC images. Training returns {"logits": (N, num_classes) from the batch-normalised
    feature, "features": (N, C) the pooled feature before the BN, for the metric losses}; evaluation returns the
    batch-normalised feature (N, C) used for retrieval. All outputs are float32; layers compute in `dtype`.
    AGW freezes the BNNeck shift at its initial 0, so the head has no shift parameter at all: no optimizer (weight
    decay included) can move it. Parameters: "backbone", "pool" (GeM p), "head" ("embed_bn", "logits_dense").
    The non-local embeddings default to the intended C/2 channels; `nonlocal_one_channel=True` is the original's
    1-channel quirk, needed for numeric parity with privacy-reid / AGW checkpoints and results.
    """

    num_classes: int
    depth: int = 50
    width: int = 64
    last_stride: int = 1
    stem_relu: bool = False
    nonlocal_blocks: Sequence[int] = AGW_NONLOCAL_BLOCKS
    nonlocal_one_channel: bool = False
    gem_p_init: float = 3.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        if not is_positive_int(self.num_classes):
            raise AGWNetworkError(f"AGWNetwork num_classes={self.num_classes!r} must be a positive integer.")
        if x.ndim != 4:
            raise AGWNetworkError(f"AGWNetwork expects NHWC images of rank 4, got shape {x.shape}.")
        feature_map = AGWTrunk(self.depth, self.width, self.last_stride, self.stem_relu, tuple(self.nonlocal_blocks),
                               self.nonlocal_one_channel, dtype=self.dtype, name="backbone")(x, train=train)
        features = GeneralizedMeanPooling(self.gem_p_init, name="pool")(feature_map)
        head = reid.BNNeck(self.num_classes, dtype=self.dtype, name="head")(features, train=train)
        if not train:
            return head["embed"].astype(jnp.float32)
        return {"logits": head["logits"].astype(jnp.float32), "features": features}


MODEL_CONFIG_FIELDS: Sequence[str] = ("depth", "width", "last_stride", "stem_relu", "nonlocal_blocks",
                                      "nonlocal_one_channel")


def feature_dim(depth: int, width: int) -> int:
    """Width of AGW's pooled (and retrieval) feature: the last ResNet stage's output channels."""
    return width * 8 * (4 if depth >= 50 else 1)


def build_agw_network(config: ml_collections.ConfigDict, num_classes: int, *, dtype: Any = jnp.float32) -> AGWNetwork:
    """An AGWNetwork from `config` (the fields in MODEL_CONFIG_FIELDS), checked, computing in `dtype`."""
    missing = [field for field in MODEL_CONFIG_FIELDS if field not in config]
    if missing:
        raise AGWNetworkError(f"model config lacks field(s) {missing}; set them in the config file's `model` "
                              f"section (needed: {list(MODEL_CONFIG_FIELDS)}).")
    try:
        reid._check_trunk(config.depth, config.width, config.last_stride)
    except reid.ReIdNetworkError as error:
        raise AGWNetworkError(f"config.model: {error}") from error
    _check_nonlocal_blocks(tuple(config.nonlocal_blocks), config.depth)
    if not is_positive_int(num_classes):
        raise AGWNetworkError(f"num_classes={num_classes!r} must be a positive integer (identities in training).")
    return AGWNetwork(num_classes=int(num_classes), depth=config.depth, width=config.width,
                      last_stride=config.last_stride, stem_relu=bool(config.stem_relu),
                      nonlocal_blocks=tuple(config.nonlocal_blocks),
                      nonlocal_one_channel=bool(config.nonlocal_one_channel), dtype=dtype)


def _trunk_only(tree: Mapping) -> dict:
    return {name: value for name, value in tree.items() if not name.startswith(NONLOCAL_PREFIX)}


def imagenet_agw_variables(variables: Mapping, state_dict: Mapping[str, np.ndarray]) -> dict:
    """AGWNetwork `variables` with the ResNet trunk taken from a torchvision state_dict (NumPy arrays, e.g.
    resnet50-19c8e357.pth read by torchvision_resnet.read_state_dict); non-local blocks, GeM and head keep their
    values, as AGW loads only the trunk (fc skipped). Raises TorchvisionConversionError when depth or width differ.
    """
    variables = flax.core.unfreeze(variables)
    backbone = {collection: variables[collection]["backbone"] for collection in ("params", "batch_stats")}
    trunk = torchvision_resnet.trunk_variables(
        state_dict, {collection: _trunk_only(tree) for collection, tree in backbone.items()})
    for collection, tree in trunk.items():
        variables[collection] = {**variables[collection],
                                 "backbone": {**backbone[collection], **jax.tree_util.tree_map(jnp.asarray, tree)}}
    return variables


# ---------------------------------------------------------------------------------------------- save / load
WORKDIR_EXPORT = "authorization_model"  # a main job's saved AGW inside its workdir (PixelFade)
CONFIG_FILE = "reid_model.json"
VARIABLES_DIR = "variables"
CHECKPOINT_FORMAT = "anon_jax.models.agw/1"


class AGWCheckpointError(ValueError):
    """A saved AGW directory is missing, malformed or does not match its description, or the values to save are bad."""


def _model_fields(model_config) -> dict:
    """MODEL_CONFIG_FIELDS of `model_config` as plain JSON values (nonlocal_blocks a list)."""
    fields = {field: model_config[field] for field in MODEL_CONFIG_FIELDS}
    fields["nonlocal_blocks"] = [int(n) for n in fields["nonlocal_blocks"]]
    for field in ("depth", "width", "last_stride"):
        fields[field] = int(fields[field])
    for field in ("stem_relu", "nonlocal_one_channel"):
        fields[field] = bool(fields[field])
    return fields


def _check_settings(model, num_classes, image_size, pixel_mean, pixel_std) -> dict:
    """The settings as load_pretrained returns them; AGWCheckpointError names the first bad value."""
    try:
        build_agw_network(ml_collections.ConfigDict(model), num_classes)
    except (AGWNetworkError, TypeError) as error:
        raise AGWCheckpointError(f"model config / num_classes: {error}") from error
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(is_positive_int(side) for side in image_size)):
        raise AGWCheckpointError(f"image_size={image_size!r} must be (height, width), two positive integers.")
    vectors = {}
    for name, values in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        try:
            vector = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            vector = ()
        if len(vector) != 3 or not all(np.isfinite(vector)) or (name == "pixel_std" and min(vector) <= 0):
            raise AGWCheckpointError(f"{name}={values!r} must be 3 finite numbers (one per RGB channel)"
                                     + (", all > 0." if name == "pixel_std" else "."))
        vectors[name] = vector
    model = {**model, "nonlocal_blocks": tuple(model["nonlocal_blocks"])}
    return {"image_size": (int(image_size[0]), int(image_size[1])), **vectors, "num_classes": int(num_classes),
            "model": model}


def abstract_variables(model_config, num_classes: int) -> dict:
    """Shapes and dtypes of {"params", "batch_stats"} of build_agw_network(model_config, num_classes), unallocated.

    No variable's shape depends on the image size, so a 32x32 stand-in (enough for every stride) traces it.
    """
    network = build_agw_network(model_config, num_classes)
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: network.init(jax.random.PRNGKey(0), x, train=False), images)
    return flax.core.unfreeze(variables)


def save_pretrained(directory, model_config, num_classes: int, variables: Mapping, *, image_size: tuple[int, int],
                    pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
    """Writes `directory` (atomically): an Orbax checkpoint of `variables` ({"params", "batch_stats"}) and
    reid_model.json (format, the model config's MODEL_CONFIG_FIELDS, num_classes, image_size (height, width) and the
    normalisation a deployment must repeat)."""
    try:
        model = _model_fields(model_config)
    except (KeyError, AttributeError, TypeError, ValueError) as error:
        raise AGWCheckpointError(f"model_config needs the fields {list(MODEL_CONFIG_FIELDS)} with integer / bool "
                                 f"values ({error!r}).") from error
    settings = _check_settings(model, num_classes, image_size, pixel_mean, pixel_std)
    mismatches = pretrained.shape_mismatches(abstract_variables(ml_collections.ConfigDict(model), num_classes),
                                             variables)
    if mismatches:
        raise AGWCheckpointError(
            f"variables do not match the model config (given vs expected): {mismatches}. Pass the whole variables "
            "dict {'params': ..., 'batch_stats': ...} of the network built from this config.")
    document = {"format": CHECKPOINT_FORMAT, "model": model, "num_classes": settings["num_classes"],
                "image_size": list(settings["image_size"]), "pixel_mean": list(settings["pixel_mean"]),
                "pixel_std": list(settings["pixel_std"])}
    with atomic_directory(directory) as staging:
        pretrained.save_tree(staging / VARIABLES_DIR, variables)
        atomic_write_text(staging / CONFIG_FILE, json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_settings(directory) -> dict:
    """The settings stored in a save_pretrained directory: {"image_size": (h, w), "pixel_mean": (3,),
    "pixel_std": (3,), "num_classes": int, "model": {MODEL_CONFIG_FIELDS}}."""
    path, document = pretrained.read_description(
        directory, CONFIG_FILE, checkpoint_format=CHECKPOINT_FORMAT, what="an AGW ReId model",
        writer="anon_jax.models.agw.save_pretrained", error_class=AGWCheckpointError)
    try:
        model = document["model"]
        unknown = sorted(set(model) - set(MODEL_CONFIG_FIELDS))
        if unknown:
            raise AGWCheckpointError(f"unknown model field(s) {unknown}")
        return _check_settings({field: model[field] for field in MODEL_CONFIG_FIELDS}, document["num_classes"],
                               document["image_size"], document["pixel_mean"], document["pixel_std"])
    except KeyError as error:
        raise AGWCheckpointError(f"{path}: field {error} is missing; rewrite the directory with "
                                 "anon_jax.models.agw.save_pretrained.") from error
    except (AttributeError, TypeError, AGWCheckpointError) as error:
        raise AGWCheckpointError(f"{path}: not a valid AGW model description ({error}); rewrite the directory "
                                 "with anon_jax.models.agw.save_pretrained.") from error


def load_pretrained(directory, *, dtype: Any = jnp.float32) -> tuple[AGWNetwork, dict, dict]:
    """(network computing in `dtype`, float32 {"params", "batch_stats"}, settings as load_settings) from a
    save_pretrained directory."""
    settings = load_settings(directory)
    model_config = ml_collections.ConfigDict(settings["model"])
    variables = pretrained.restore_saved(
        pathlib.Path(directory).absolute() / VARIABLES_DIR, abstract_variables(model_config, settings["num_classes"]),
        what="variables", config_file=CONFIG_FILE, error_class=AGWCheckpointError)
    return build_agw_network(model_config, settings["num_classes"], dtype=dtype), variables, settings
