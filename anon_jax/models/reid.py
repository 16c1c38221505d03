"""ReId networks: torchvision-style ResNet-18/34/50/101/152 trunks (NHWC, any input channels) with the
paper's ClassBlock head or a BNNeck head. Parameters live under two top-level names, "backbone" and
"head", so optimizers can give the head its own learning rate.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from anon_jax.models.layers import BatchNorm, loop_friendly_conv
from anon_jax.validation import is_positive_int


# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"): untruncated N(0, 2 / fan_out).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
HEADS = ("classblock", "bnneck")


class ReIdNetworkError(ValueError):
    """A ReId network was configured with values it cannot be built from."""


def _batch_norm(train: bool, dtype: Any, name: str, **kwargs) -> BatchNorm:
    return BatchNorm(use_running_average=not train, dtype=dtype, name=name, **kwargs)


def _conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
    # Explicit symmetric padding as in PyTorch; "SAME" pads asymmetrically for even sizes at stride 2.
    pad = (kernel - 1) // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=kaiming_normal_fan_out,
        dtype=dtype,
        name=name,
        # Same values; keeps input gradients fast inside loops (PixelFade's fori_loop on CPU).
        conv_general_dilated=loop_friendly_conv,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x, *, train: bool):
        out = _conv(self.planes, 3, self.stride, self.dtype, "conv1")(x)
        out = nn.relu(_batch_norm(train, self.dtype, "bn1")(out))
        out = _conv(self.planes, 3, 1, self.dtype, "conv2")(out)
        out = _batch_norm(train, self.dtype, "bn2")(out)
        shortcut = _shortcut(x, self.planes * self.expansion, self.stride, train, self.dtype)
        return nn.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride, torchvision v1.5), 1x1 expand x4, residual (ResNet-50+)."""

    planes: int
    stride: int = 1
    dtype: Any = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x, *, train: bool):
        out = _conv(self.planes, 1, 1, self.dtype, "conv1")(x)
        out = nn.relu(_batch_norm(train, self.dtype, "bn1")(out))
        out = _conv(self.planes, 3, self.stride, self.dtype, "conv2")(out)
        out = nn.relu(_batch_norm(train, self.dtype, "bn2")(out))
        out = _conv(self.planes * self.expansion, 1, 1, self.dtype, "conv3")(out)
        out = _batch_norm(train, self.dtype, "bn3")(out)
        shortcut = _shortcut(x, self.planes * self.expansion, self.stride, train, self.dtype)
        return nn.relu(out + shortcut)


def _shortcut(x, features: int, stride: int, train: bool, dtype: Any):
    """Identity, or 1x1 conv + BN (torchvision's `downsample`) when the shape changes.

    Called inside a compact block, so the submodules below belong to that block.
    """
    if stride == 1 and x.shape[-1] == features:
        return x
    shortcut = _conv(features, 1, stride, dtype, "downsample_conv")(x)
    return _batch_norm(train, dtype, "downsample_bn")(shortcut)


class ResNet(nn.Module):
    """ResNet trunk without pooling or fc: conv1 7x7/2, BN, ReLU, maxpool 3x3/2, four stages.

    Returns the last feature map (N, H/16 or H/32, W/16 or W/32, 8 * width * expansion).
    Submodule names follow torchvision (`conv1`, `bn1`, `layer1_0/conv1`, ...) to ease weight import.
    """

    depth: int = 50
    width: int = 64
    last_stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        _check_trunk(self.depth, self.width, self.last_stride)
        block_cls = BasicBlock if self.depth < 50 else Bottleneck
        x = _conv(self.width, 7, 2, self.dtype, "conv1")(x)
        x = nn.relu(_batch_norm(train, self.dtype, "bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stage_strides = (1, 2, 2, self.last_stride)
        for stage, (num_blocks, stride) in enumerate(zip(STAGE_BLOCKS[self.depth], stage_strides)):
            planes = self.width * 2**stage
            for index in range(num_blocks):
                x = block_cls(
                    planes, stride if index == 0 else 1, dtype=self.dtype, name=f"layer{stage + 1}_{index}"
                )(x, train=train)
        return x


def _check_trunk(depth: int, width: int, last_stride: int) -> None:
    if depth not in STAGE_BLOCKS:
        raise ReIdNetworkError(f"ResNet depth={depth!r} is not supported; use one of {sorted(STAGE_BLOCKS)}.")
    if not is_positive_int(width):
        raise ReIdNetworkError(f"ResNet width={width!r} must be a positive integer (64 in torchvision).")
    if last_stride not in (1, 2):
        raise ReIdNetworkError(f"ResNet last_stride={last_stride!r} must be 1 (paper) or 2 (torchvision).")



def feature_width(depth: int, width: int = 64) -> int:
    """Channels of the trunk's output (2048 for ResNet-50 at width 64, 512 for ResNet-18/34)."""
    _check_trunk(depth, width, 1)
    return 8 * width * (BasicBlock.expansion if depth < 50 else Bottleneck.expansion)


def global_average_pool(feature_map):
    """Mean over the spatial axes of an NHWC map (PyTorch's AdaptiveAvgPool2d(1) + flatten)."""
    return jnp.mean(feature_map, axis=(1, 2))


class ClassBlock(nn.Module):
    """The paper's head: Dense -> BatchNorm -> LeakyReLU(0.5) -> Dropout -> `embed` -> Dense -> `logits`.

    `dropout` is 0 in the ReId-without-Id head and 0.5 in AnonyNoise's ClassNet; it acts in training only and
    then needs a "dropout" rng. Both `embed` and the logits see the dropped values, as in AnonyNoise.
    """

    num_classes: int
    embed_dim: int = 256
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled, *, train: bool):
        embed = nn.Dense(
            self.embed_dim, kernel_init=kaiming_normal_fan_out, bias_init=nn.initializers.zeros,
            dtype=self.dtype, name="embed_dense",
        )(pooled)
        embed = _batch_norm(
            train, self.dtype, "embed_bn", scale_init=_normal_around_one(0.02), bias_init=nn.initializers.zeros
        )(embed)
        embed = nn.leaky_relu(embed, negative_slope=0.5)
        embed = nn.Dropout(self.dropout, deterministic=not train)(embed)
        logits = nn.Dense(
            self.num_classes, kernel_init=nn.initializers.normal(0.001), bias_init=nn.initializers.zeros,
            dtype=self.dtype, name="logits_dense",
        )(embed)
        return {"logits": logits, "embed": embed}


class BNNeck(nn.Module):
    """Strong-baseline BNNeck: `embed` = BatchNorm without shift of the pooled feature; bias-free classifier."""

    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, pooled, *, train: bool):
        # The original freezes the BN shift at zero; having no shift at all is the same function.
        embed = _batch_norm(train, self.dtype, "embed_bn", use_bias=False)(pooled)
        logits = nn.Dense(
            self.num_classes, use_bias=False, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
            name="logits_dense",
        )(embed)
        return {"logits": logits, "embed": embed}


def _normal_around_one(stddev: float):
    def init(key, shape, dtype=jnp.float32):
        return 1.0 + nn.initializers.normal(stddev)(key, shape, dtype)

    return init


class ReIdNetwork(nn.Module):
    """ResNet trunk + global average pool + ClassBlock or BNNeck head.

    `__call__(x, *, train)` takes NHWC input with any number of channels and returns
    `{"logits": (N, num_classes), "embed": (N, E), "pool5": (N, feature_width)}`, all float32.
    With head="classblock", E = embed_dim (after BN + LeakyReLU, as in the paper); with head="bnneck",
    `embed` is the batch-normalised pool5 and E = feature_width (embed_dim is not used). Layers compute in
    `dtype`; parameters and batch statistics are float32.
    """

    depth: int
    num_classes: int
    width: int = 64
    last_stride: int = 1
    head: str = "classblock"
    embed_dim: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        if self.head not in HEADS:
            raise ReIdNetworkError(f"ReIdNetwork head={self.head!r} is not supported; use one of {HEADS}.")
        if not is_positive_int(self.num_classes):
            raise ReIdNetworkError(f"ReIdNetwork num_classes={self.num_classes!r} must be a positive integer.")
        if x.ndim != 4:
            raise ReIdNetworkError(f"ReIdNetwork expects NHWC input of rank 4, got shape {x.shape}.")
        feature_map = ResNet(self.depth, self.width, self.last_stride, dtype=self.dtype, name="backbone")(
            x, train=train
        )
        # Pooled in float32: pool5 is a returned descriptor, so it keeps float32 precision.
        pool5 = global_average_pool(feature_map.astype(jnp.float32))
        if self.head == "classblock":
            outputs = ClassBlock(self.num_classes, self.embed_dim, dtype=self.dtype, name="head")(pool5, train=train)
        else:
            outputs = BNNeck(self.num_classes, dtype=self.dtype, name="head")(pool5, train=train)
        return {"logits": outputs["logits"].astype(jnp.float32), "embed": outputs["embed"].astype(jnp.float32),
                "pool5": pool5}


MODEL_CONFIG_FIELDS: Sequence[str] = ("depth", "width", "last_stride", "head", "embed_dim")


def build_reid_network(config: ml_collections.ConfigDict, num_classes: int, *, dtype: Any = jnp.float32) -> ReIdNetwork:
    """A ReIdNetwork computing in `dtype` from `config` (depth, width, last_stride, head, embed_dim), checked."""
    missing = [field for field in MODEL_CONFIG_FIELDS if field not in config]
    if missing:
        raise ReIdNetworkError(
            f"model config lacks field(s) {missing}; set them in the config file's `model` section "
            f"(needed: {list(MODEL_CONFIG_FIELDS)})."
        )
    _check_trunk(config.depth, config.width, config.last_stride)
    if config.head not in HEADS:
        raise ReIdNetworkError(f"config.model.head={config.head!r}: use one of {HEADS}.")
    if not is_positive_int(config.embed_dim):
        raise ReIdNetworkError(f"config.model.embed_dim={config.embed_dim!r} must be a positive integer.")
    if not is_positive_int(num_classes):
        raise ReIdNetworkError(f"num_classes={num_classes!r} must be a positive integer (identities in training).")
    return ReIdNetwork(
        depth=config.depth,
        num_classes=num_classes,
        width=config.width,
        last_stride=config.last_stride,
        head=config.head,
        embed_dim=config.embed_dim,
        dtype=dtype,
    )
