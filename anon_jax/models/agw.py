"""AGW ReId network (ReID-Survey's baseline, as privacy-reid trains it): ResNet-50 with non-local blocks, GeM
pooling and a BNNeck head, NHWC. The trunk keeps torchvision's names under "backbone" (non-local blocks beside
them as `nonlocal_layer<stage>_<block>`), so ImageNet weights import through convert/torchvision_resnet.py.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from anon_jax.convert import torchvision_resnet
from anon_jax.models import reid
from anon_jax.models.anonymizer import torch_default_bias_init, torch_default_kernel_init
from anon_jax.models.layers import BatchNorm
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
                           bias_init=torch_default_bias_init(channels), dtype=self.dtype, name=name)(x)

        theta = embed("theta").reshape(batch, positions, self.inter_channels)
        phi = embed("phi").reshape(batch, positions, self.inter_channels)
        g = embed("g").reshape(batch, positions, self.inter_channels)
        # theta (phi^T g) equals (theta phi^T) g without the (N, N) affinity matrix.
        y = jnp.einsum("bni,bij->bnj", theta, jnp.einsum("bmi,bmj->bij", phi, g)) / positions
        y = y.reshape(batch, height, width, self.inter_channels)
        w_y = nn.Conv(channels, (1, 1), kernel_init=torch_default_kernel_init,
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
