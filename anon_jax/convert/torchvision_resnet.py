"""Import of torchvision ResNet state_dicts (e.g. ImageNet weights) into anon_jax.models.reid.ResNet trunks.

The caller supplies the file (nothing is downloaded); conv1 may be widened to any number of input channels by
repeating the RGB filters cyclically, as AnonyNoise does for its 10-channel event frames.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import flax
import numpy as np

# Flax module / leaf names of a reid.ResNet trunk that torchvision spells differently.
_TORCH_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_TORCH_LEAF_NAMES = {
    ("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var",
}
# torchvision tensors a trunk has no use for: the ImageNet classifier and BN's update counters.
_UNUSED_PREFIXES = ("fc.",)
_UNUSED_SUFFIXES = (".num_batches_tracked",)


class TorchvisionConversionError(ValueError):
    """A torchvision state_dict does not fit the ResNet trunk it is converted into."""


def torch_key(collection: str, path: Sequence[str]) -> str:
    """The torchvision state_dict key of a reid.ResNet variable (`layer1_0/conv1/kernel` -> `layer1.0.conv1.weight`)."""
    *modules, leaf = path
    parts = [_TORCH_MODULE_NAMES.get(name, name.replace("_", ".")) for name in modules]
    return ".".join(parts + [_TORCH_LEAF_NAMES[(collection, leaf)]])


def cyclic_input_channels(weight: np.ndarray, in_channels: int) -> np.ndarray:
    """An OIHW conv weight with `in_channels` inputs: input i takes the filter of input i % (given inputs).

    No rescaling (AnonyNoise's stem: R, G, B, R, G, B, ... for 10 channels); fewer channels keep the first ones.
    """
    if weight.ndim != 4:
        raise TorchvisionConversionError(f"conv1.weight must be OIHW (rank 4), got shape {weight.shape}.")
    return weight[:, np.arange(in_channels) % weight.shape[1]]


def _to_flax(value: np.ndarray) -> np.ndarray:
    # Conv weights OIHW -> HWIO; BN vectors unchanged.
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def trunk_variables(state_dict: Mapping[str, np.ndarray], abstract_trunk: Mapping) -> dict:
    """{"params", "batch_stats"} of a reid.ResNet holding a torchvision ResNet's weights.

    `abstract_trunk` ({"params", "batch_stats"} of the target trunk, arrays or shape structs) fixes depth, width
    and the number of input channels; conv1 is widened cyclically to that number. Every trunk tensor must be
    present with the target's shape, and the state_dict may hold nothing else except `fc.*` and
    `num_batches_tracked`.
    """
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(abstract_trunk)))
    converted, used, missing, wrong = {}, set(), [], []
    for (collection, *path), target in flat.items():
        key = torch_key(collection, path)
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        value = np.asarray(state_dict[key], np.float32)
        if key == "conv1.weight":
            value = cyclic_input_channels(value, target.shape[2])
        value = _to_flax(value)
        if value.shape != tuple(target.shape):
            wrong.append(f"{key}: {value.shape} (as Flax) vs {tuple(target.shape)}")
        converted[(collection, *path)] = value
    unexpected = sorted(key for key in state_dict if key not in used
                        and not key.startswith(_UNUSED_PREFIXES) and not key.endswith(_UNUSED_SUFFIXES))
    if missing or unexpected or wrong:
        raise TorchvisionConversionError(
            f"the state_dict does not fit the ResNet trunk: missing {missing}; unexpected {unexpected}; "
            f"shapes {wrong}. Build the trunk with the checkpoint's depth and width (torchvision: width 64).")
    return flax.traverse_util.unflatten_dict(converted)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a torchvision checkpoint file (e.g. resnet50-0676ba61.pth) as NumPy arrays."""
    try:
        import torch  # only reading the file needs PyTorch
    except ImportError as error:
        raise ImportError("reading a PyTorch checkpoint needs PyTorch: pip install torch==2.13.0") from error
    if not os.path.isfile(path):
        raise TorchvisionConversionError(f"{path}: no such checkpoint file.")
    # torchvision's files are plain state_dicts: tensors only, so the safe weights-only unpickler reads them.
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(value, torch.Tensor) for value in raw.values()):
        raise TorchvisionConversionError(
            f"{path}: expected a state_dict (a dict of tensors, as torchvision's model files), "
            f"found {type(raw).__name__}.")
    return {key: value.detach().cpu().numpy() for key, value in raw.items()}
