"""AnonyNoise's networks in Flax Linen, NHWC: the noise anonymizer, the target / ReId ClassNet (ResNet trunk +
ClassBlock head with dropout) and the DnCNN-like denoiser of the inversion attack, plus the ImageNet stem init.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import os
import pathlib
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from anon_jax.convert import torchvision_resnet
from anon_jax.files import atomic_directory, atomic_write_text
from anon_jax.models import pretrained, reid
from anon_jax.models.anonymizer import torch_conv3x3
from anon_jax.models.layers import BatchNorm
from anon_jax.validation import is_positive_int

NOISE_VARIANTS = ("scaled_noise", "mean_and_scaled_noise")
ANONYMIZER_FEATURES = (64, 128, 256, 128, 64)


ANONYMIZER_FILE = "anonynoise_anonymizer.json"
ANONYMIZER_FORMAT = "anon_jax.anonynoise_anonymizer.v1"
ANONYMIZER_FIELDS = ("num_channels", "variant", "noise_std", "features")
PARAMS_DIR = "params"


class AnonyNoiseNetworkError(ValueError):
    """An AnonyNoise network got a setting or an input it cannot work with."""


class AnonymizerFileError(ValueError):
    """A saved AnonyNoise anonymizer directory is missing, unreadable or inconsistent."""


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def flat_torch_default_kernel_init(key, shape, dtype=jnp.float32):
    """anonymizer.torch_default_kernel_init's U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for an HWIO kernel, drawn as one
    flat vector: XLA's CPU compile of a rank-4 draw with few output features takes seconds, a flat one a fraction."""
    fan_in = math.prod(shape[:-1])
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, (math.prod(shape),), dtype, -bound, bound).reshape(shape)


# The published layers with the kernels drawn flat (same distribution; see flat_torch_default_kernel_init).
_conv3x3 = functools.partial(torch_conv3x3, kernel_init=flat_torch_default_kernel_init)


def _check_frames(frames, num_channels: int, name: str) -> None:
    if frames.ndim != 4 or frames.shape[-1] != num_channels:
        raise AnonyNoiseNetworkError(
            f"{name} expects frames of shape (batch, height, width, {num_channels}) (NHWC), got "
            f"{tuple(frames.shape)}; set num_channels to the frames' channels (2 x time bins).")


class NoiseAnonymizer(nn.Module):
    """Six 3x3 convs (2C -> 64 -> 128 -> 256 -> 128 -> 64 -> C or 2C, ReLU between) on concat(x, n); the five
    hidden widths are `features`.

    n = noise_std * N(0, 1) has x's shape and is drawn afresh on every call from the "noise" rng (in eval too).
    variant "scaled_noise" (the released code) returns x + S * n with S the net's C-channel output.
    variant "mean_and_scaled_noise" (the paper's figure) splits a 2C-channel output into mu and sigma and returns
    x + mu + n * sigma. The figure calls the second map X_sigma^2 yet multiplies N(0, 1) by it directly; it is
    used unchanged here (no square or root), so it plays the role of S and, like S, is unbounded and may be
    negative. noise_std = 0 draws nothing: "scaled_noise" then returns x exactly, "mean_and_scaled_noise"
    returns x + mu(x, 0), a deterministic learned shift. Layers compute in `dtype`; params and output are float32.
    """

    num_channels: int = 10
    variant: str = "scaled_noise"
    noise_std: float = 1.0
    features: Sequence[int] = ANONYMIZER_FEATURES
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames, *, unit_noise=None):
        """Anonymised frames; `unit_noise` (N(0, 1) of frames' shape) replaces the rng draw, e.g. in tests."""
        if not is_positive_int(self.num_channels):
            raise AnonyNoiseNetworkError(f"NoiseAnonymizer num_channels={self.num_channels!r} must be a positive "
                                         "integer.")
        if self.variant not in NOISE_VARIANTS:
            raise AnonyNoiseNetworkError(f"NoiseAnonymizer variant={self.variant!r}: use one of {NOISE_VARIANTS}.")
        if not (_is_number(self.noise_std) and math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise AnonyNoiseNetworkError(f"NoiseAnonymizer noise_std={self.noise_std!r} must be a finite number "
                                         ">= 0 (1.0 in AnonyNoise).")
        if not (len(self.features) == 5 and all(is_positive_int(width) for width in self.features)):
            raise AnonyNoiseNetworkError(f"NoiseAnonymizer features={self.features!r} must be five positive "
                                         f"integers, the hidden widths (AnonyNoise: {ANONYMIZER_FEATURES}).")
        _check_frames(frames, self.num_channels, "NoiseAnonymizer")
        if unit_noise is not None and unit_noise.shape != frames.shape:
            raise AnonyNoiseNetworkError(f"NoiseAnonymizer unit_noise has shape {tuple(unit_noise.shape)}; it must "
                                         f"have the frames' shape {tuple(frames.shape)}.")
        frames = frames.astype(jnp.float32)
        if self.noise_std == 0:
            noise = jnp.zeros_like(frames)
        else:
            if unit_noise is None:
                # Drawn flat: XLA's CPU compile of a rank-4 threefry draw takes ~9 s, a flat one 0.3 s.
                unit_noise = jax.random.normal(self.make_rng("noise"), (frames.size,), jnp.float32)
                unit_noise = unit_noise.reshape(frames.shape)
            noise = self.noise_std * unit_noise.astype(jnp.float32)
        # The same draw is the network's second input and the multiplicand of its output.
        x = jnp.concatenate([frames, noise], axis=-1).astype(self.dtype)
        in_features = 2 * self.num_channels
        for index, features in enumerate(self.features):
            x = nn.relu(_conv3x3(features, in_features, dtype=self.dtype, name=f"conv{index + 1}")(x))
            in_features = features
        out_features = self.num_channels * (2 if self.variant == "mean_and_scaled_noise" else 1)
        x = _conv3x3(out_features, in_features, dtype=self.dtype, name="conv6")(x)
        x = x.astype(jnp.float32)
        if self.variant == "scaled_noise":
            return frames + x * noise
        mean, scale = jnp.split(x, 2, axis=-1)
        return frames + mean + noise * scale


def save_anonymizer(directory: str | os.PathLike, anonymizer: NoiseAnonymizer, params) -> None:
    """Writes `directory` (atomically): the anonymizer's settings (anonynoise_anonymizer.json) and its params
    (Orbax), so that another run (e.g. EventReIDv2's attacker, which has no target task) can load it."""
    settings = {field: getattr(anonymizer, field) for field in ANONYMIZER_FIELDS}
    settings["features"] = list(settings["features"])
    mismatches = pretrained.shape_mismatches(_abstract_anonymizer_params(NoiseAnonymizer(**settings)), params)
    if mismatches:
        raise AnonymizerFileError(f"params do not match the anonymizer (given vs expected): {mismatches}.")
    with atomic_directory(directory) as staging:
        pretrained.save_tree(staging / PARAMS_DIR, params)
        atomic_write_text(staging / ANONYMIZER_FILE, json.dumps(
            {"format": ANONYMIZER_FORMAT, "anonymizer": settings}, indent=2, sort_keys=True) + "\n")


def load_anonymizer(directory: str | os.PathLike, *, dtype: Any = jnp.float32) -> tuple[NoiseAnonymizer, dict]:
    """(module computing in `dtype`, float32 params) of a save_anonymizer directory."""
    path = pathlib.Path(directory) / ANONYMIZER_FILE
    if not path.is_file():
        raise AnonymizerFileError(f"{path} is missing: {directory} is not an AnonyNoise anonymizer directory (a "
                                  "finished AnonyNoise run writes one to <workdir>/anonymizer).")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != ANONYMIZER_FORMAT:
            raise AnonymizerFileError(f"{path}: format {document.get('format')!r}, expected {ANONYMIZER_FORMAT!r}.")
        settings = {field: document["anonymizer"][field] for field in ANONYMIZER_FIELDS}
        anonymizer = NoiseAnonymizer(**dict(settings, features=tuple(settings["features"])), dtype=dtype)
        abstract = _abstract_anonymizer_params(anonymizer)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, KeyError, TypeError,
            AnonyNoiseNetworkError) as error:
        raise AnonymizerFileError(f"{path} is not a valid anonymizer description ({error!r}); write it with "
                                  "anon_jax.models.anonynoise.save_anonymizer.") from error
    params = pretrained.restore_saved(pathlib.Path(directory).absolute() / PARAMS_DIR, abstract,
                                      what="anonymizer parameters", config_file=ANONYMIZER_FILE,
                                      error_class=AnonymizerFileError)
    return anonymizer, params


def _abstract_anonymizer_params(anonymizer: NoiseAnonymizer):
    """Shape/dtype structure of the anonymizer's params (fully convolutional: any frame size will do)."""
    frames = jax.ShapeDtypeStruct((1, 8, 8, anonymizer.num_channels), jnp.float32)
    rng = jax.random.key(0)
    shapes = jax.eval_shape(lambda: anonymizer.init({"params": rng, "noise": rng}, jnp.zeros(frames.shape)))
    return flax.core.unfreeze(shapes)["params"]


class ClassNet(nn.Module):
    """AnonyNoise's target and ReId network: torchvision ResNet trunk (any input channels, last stride 2),
    global average pool (`pool5`), then reid.ClassBlock: Dense(embed_dim) -> BN -> LeakyReLU(0.5) -> Dropout
    (`embed`) -> Dense (`logits`).

    `__call__(frames, *, train)` returns {"logits", "embed", "pool5"}, float32. Training with dropout > 0 needs
    a "dropout" rng; `embed` is then the dropped feature (the one AnonyNoise's triplet loss sees). Parameters sit
    under "backbone" and "head" (as reid.ReIdNetwork); layers compute in `dtype`, params are float32.
    """

    num_classes: int
    depth: int = 50
    width: int = 64
    embed_dim: int = 512
    dropout: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames, *, train: bool):
        if not is_positive_int(self.num_classes):
            raise AnonyNoiseNetworkError(f"ClassNet num_classes={self.num_classes!r} must be a positive integer.")
        if not is_positive_int(self.embed_dim):
            raise AnonyNoiseNetworkError(f"ClassNet embed_dim={self.embed_dim!r} must be a positive integer.")
        if not (_is_number(self.dropout) and 0 <= self.dropout < 1):
            raise AnonyNoiseNetworkError(f"ClassNet dropout={self.dropout!r} must be in [0, 1) (0.5 in AnonyNoise).")
        if frames.ndim != 4:
            raise AnonyNoiseNetworkError(f"ClassNet expects NHWC frames of rank 4, got shape {tuple(frames.shape)}.")
        feature_map = reid.ResNet(self.depth, self.width, last_stride=2, dtype=self.dtype, name="backbone")(
            frames, train=train)
        # Pooled in float32: pool5 is a returned descriptor. No squeeze, so a batch of one works (unlike upstream).
        pool5 = reid.global_average_pool(feature_map.astype(jnp.float32))
        outputs = reid.ClassBlock(self.num_classes, self.embed_dim, dropout=self.dropout, dtype=self.dtype,
                                  name="head")(pool5, train=train)
        return {"logits": outputs["logits"].astype(jnp.float32), "embed": outputs["embed"].astype(jnp.float32),
                "pool5": pool5}


class DenoiseNet(nn.Module):
    """The inversion attack's denoiser: Conv(C -> features) + ReLU, (num_layers - 2) x [Conv + BatchNorm + ReLU],
    Conv(features -> C); all 3x3 with bias and PyTorch's default init.

    Returns the clean estimate itself (no residual subtraction, unlike DnCNN). Layers compute in `dtype`; params,
    batch statistics and output are float32.
    """

    num_channels: int = 10
    features: int = 128
    num_layers: int = 15
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool):
        for field in ("num_channels", "features"):
            if not is_positive_int(getattr(self, field)):
                raise AnonyNoiseNetworkError(f"DenoiseNet {field}={getattr(self, field)!r} must be a positive "
                                             "integer.")
        if not (is_positive_int(self.num_layers) and self.num_layers >= 2):
            raise AnonyNoiseNetworkError(f"DenoiseNet num_layers={self.num_layers!r} must be an integer >= 2 "
                                         "(first and last conv).")
        _check_frames(x, self.num_channels, "DenoiseNet")
        last = self.num_layers - 1
        x = nn.relu(_conv3x3(self.features, self.num_channels, dtype=self.dtype, name="conv0")(x.astype(self.dtype)))
        for index in range(1, last):
            x = _conv3x3(self.features, self.features, dtype=self.dtype, name=f"conv{index}")(x)
            x = nn.relu(BatchNorm(use_running_average=not train, dtype=self.dtype, name=f"bn{index}")(x))
        x = _conv3x3(self.num_channels, self.features, dtype=self.dtype, name=f"conv{last}")(x)
        return x.astype(jnp.float32)


def imagenet_classnet_params(variables: Mapping, state_dict: Mapping[str, np.ndarray]) -> dict:
    """ClassNet `variables` with the trunk ("backbone" params and batch_stats) taken from a torchvision ResNet
    state_dict (NumPy arrays, e.g. ImageNet ResNet-50 V1 read by torchvision_resnet.read_state_dict).

    conv1 is widened to the ClassNet's input channels by cyclic copy, W[:, i] = W_rgb[:, i % 3], unscaled, as
    AnonyNoise does; the head keeps its values. Raises TorchvisionConversionError when depth or width differ.
    """
    variables = flax.core.unfreeze(variables)
    trunk = torchvision_resnet.trunk_variables(
        state_dict, {collection: variables[collection]["backbone"] for collection in ("params", "batch_stats")})
    for collection, tree in trunk.items():
        variables[collection] = {**variables[collection],
                                 "backbone": jax.tree_util.tree_map(jnp.asarray, tree)}
    return variables
