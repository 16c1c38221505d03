"""Convert a published E2VID checkpoint (PyTorch pickle) into an anon_jax E2VID directory.

    python -m anon_jax.convert.e2vid E2VID_lightweight.pth.tar OUT_DIR

The configuration comes from the checkpoint's stored model config, checked against the tensor shapes
(fields the stored config lacks are inferred from the shapes); the result loads with
`anon_jax.models.e2vid.load_pretrained(OUT_DIR)` without PyTorch.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping, Sequence

import flax
import ml_collections
import numpy as np

from anon_jax.models import e2vid

# Published architectures and the attribute that holds their UNet (the state_dict key prefix).
ARCH_PREFIXES = {"E2VIDRecurrent": "unetrecurrent.", "E2VID": "unet."}

# Flax module names whose PyTorch attribute is named differently (the rest are spelled alike).
_TORCH_MODULE_NAMES = {
    "norm": "norm_layer", "norm1": "bn1", "norm2": "bn2", "convlstm": "recurrent_block",
    "convgru": "recurrent_block", "gates": "Gates", "transposed_conv": "transposed_conv2d",
}
_TORCH_LEAF_NAMES = {
    ("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var",
}
_INDEXED_MODULES = {"encoder": "encoders", "resblock": "resblocks", "decoder": "decoders"}


class CheckpointConversionError(ValueError):
    """A PyTorch checkpoint cannot be converted into an E2VID model (wrong keys, shapes or config)."""


def torch_key(collection: str, path: Sequence[str]) -> str:
    """The PyTorch state_dict key (without the arch prefix) of a Flax variable path."""
    *modules, leaf = path
    parts = []
    for position, name in enumerate(modules):
        stem, _, index = name.rpartition("_")
        if stem in _INDEXED_MODULES and index.isdigit():
            parts += [_INDEXED_MODULES[stem], index]
        elif name == "conv" and position == len(modules) - 1:
            parts.append("conv2d")  # the conv inside a ConvLayer; RecurrentConvLayer's ConvLayer is "conv"
        else:
            parts.append(_TORCH_MODULE_NAMES.get(name, name))
    return ".".join(parts + [_TORCH_LEAF_NAMES[(collection, leaf)]])


def _indices(keys, group: str) -> list[int]:
    found = sorted({int(key.split(".")[1]) for key in keys if key.startswith(group + ".")})
    if found != list(range(len(found))):
        raise CheckpointConversionError(f"state_dict {group} are numbered {found}; expected 0..{len(found) - 1}.")
    return found


def _shape(state_dict: Mapping[str, np.ndarray], key: str) -> tuple:
    if key not in state_dict:
        raise CheckpointConversionError(f"state_dict lacks {key!r}, needed to infer the architecture.")
    return tuple(state_dict[key].shape)


def infer_config_from_shapes(state_dict: Mapping[str, np.ndarray], recurrent: bool) -> dict[str, Any]:
    """E2VID config fields read off the tensor names and shapes of an (unprefixed) state_dict."""
    base, num_bins = _shape(state_dict, "head.conv2d.weight")[:2]
    num_encoders = len(_indices(state_dict, "encoders"))
    if num_encoders == 0:
        raise CheckpointConversionError("state_dict has no encoders.* keys.")
    encoder = "encoders.0.conv." if recurrent else "encoders.0."
    if encoder + "norm_layer.weight" in state_dict:
        norm = "BN"
    elif encoder + "norm_layer.running_mean" in state_dict:
        norm = "IN"  # InstanceNorm2d(track_running_stats=True): statistics but no affine parameters
    else:
        norm = "none"
    if "decoders.0.transposed_conv2d.weight" in state_dict:
        decoder = "transposed"
    elif "decoders.0.conv2d.weight" in state_dict:
        decoder = "upsample_conv"
    else:
        raise CheckpointConversionError(
            "state_dict has neither decoders.0.transposed_conv2d.weight nor decoders.0.conv2d.weight.")
    pred_inputs = _shape(state_dict, "pred.conv2d.weight")[1]
    if pred_inputs not in (base, 2 * base):
        raise CheckpointConversionError(
            f"pred.conv2d.weight takes {pred_inputs} channels; a {base}-channel E2VID takes {base} (sum skips) "
            f"or {2 * base} (concat skips).")
    fields = dict(
        num_bins=num_bins, recurrent=recurrent, num_encoders=num_encoders, base_channels=base,
        num_residual_blocks=len(_indices(state_dict, "resblocks")), norm=norm, decoder=decoder,
        skip="sum" if pred_inputs == base else "concat",
    )
    if recurrent:
        if "encoders.0.recurrent_block.Gates.weight" in state_dict:
            fields["recurrent_block"] = "convlstm"
        elif "encoders.0.recurrent_block.update_gate.weight" in state_dict:
            fields["recurrent_block"] = "convgru"
        else:
            raise CheckpointConversionError(
                "state_dict has neither a ConvLSTM (encoders.0.recurrent_block.Gates.weight) nor a ConvGRU "
                "(encoders.0.recurrent_block.update_gate.weight) in its first encoder.")
    return fields


def _stored_fields(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """The stored E2VID config (BaseE2VID key names) in anon_jax's field names; absent keys are left out."""
    fields = {}
    for stored, field in (("num_bins", "num_bins"), ("num_encoders", "num_encoders"),
                          ("base_num_channels", "base_channels"), ("num_residual_blocks", "num_residual_blocks"),
                          ("skip_type", "skip"), ("recurrent_block_type", "recurrent_block")):
        if stored in model_config:
            value = model_config[stored]
            fields[field] = int(value) if field not in ("skip", "recurrent_block") else str(value)
    if "norm" in model_config:
        # BaseE2VID applies str(): None becomes 'None', which (like any other string) means no norm.
        norm = str(model_config["norm"])
        fields["norm"] = norm if norm in ("BN", "IN") else "none"
    if "use_upsample_conv" in model_config:
        fields["decoder"] = "upsample_conv" if bool(model_config["use_upsample_conv"]) else "transposed"
    return fields


def _split_prefix(arch: str | None, state_dict: Mapping[str, np.ndarray]) -> tuple[bool, dict[str, np.ndarray]]:
    """(recurrent, state_dict without the 'unetrecurrent.' / 'unet.' prefix), checked against `arch`."""
    if arch is not None and arch not in ARCH_PREFIXES:
        raise CheckpointConversionError(
            f"checkpoint arch {arch!r} is not supported; convertible: {sorted(ARCH_PREFIXES)}.")
    keys = list(state_dict)
    prefixed = [name for name, prefix in ARCH_PREFIXES.items() if keys and all(k.startswith(prefix) for k in keys)]
    if prefixed:
        prefix_arch = prefixed[0]
        if arch is not None and arch != prefix_arch:
            raise CheckpointConversionError(
                f"checkpoint arch {arch!r} but its state_dict keys start with {ARCH_PREFIXES[prefix_arch]!r} "
                f"(the {prefix_arch} layout).")
        arch = prefix_arch
        state_dict = {k[len(ARCH_PREFIXES[arch]):]: v for k, v in state_dict.items()}
    elif arch is None:
        arch = "E2VIDRecurrent" if any(".recurrent_block." in k for k in keys) else "E2VID"
    return arch == "E2VIDRecurrent", dict(state_dict)


def build_config(arch: str | None, model_config: Mapping[str, Any] | None,
                 state_dict: Mapping[str, np.ndarray]) -> ml_collections.ConfigDict:
    """The E2VID config of a checkpoint: stored fields checked against the shapes, the rest inferred."""
    recurrent, state_dict = _split_prefix(arch, state_dict)
    inferred = infer_config_from_shapes(state_dict, recurrent)
    stored = _stored_fields(model_config or {})
    if not recurrent:
        stored.pop("recurrent_block", None)  # BaseE2VID's UNet ignores it
    conflicts = [f"{field}: stored {stored[field]!r}, tensors say {inferred[field]!r}"
                 for field in sorted(stored) if stored[field] != inferred[field]]
    if conflicts:
        raise CheckpointConversionError(
            "the checkpoint's stored model config disagrees with its tensor shapes: " + "; ".join(conflicts) + ".")
    return e2vid.e2vid_config(**inferred)


def convert_state_dict(arch: str | None, model_config: Mapping[str, Any] | None,
                       state_dict: Mapping[str, np.ndarray]) -> tuple[ml_collections.ConfigDict, dict]:
    """(config, Flax variables) from a published E2VID state_dict of NumPy arrays (NCHW / OIHW).

    Conv and transposed-conv kernels go to HWIO by transpose (2, 3, 1, 0) (the transposed conv's Flax
    kernel is stored (kh, kw, out, in), see DecoderLayer); BatchNorm weight/bias/running statistics map to
    scale/bias/mean/var; `num_batches_tracked` is dropped. Unknown or missing keys raise an error listing them.
    """
    config = build_config(arch, model_config, state_dict)
    _, unprefixed = _split_prefix(arch, state_dict)
    expected = flax.traverse_util.flatten_dict(e2vid.abstract_variables(config))
    sources = {path: torch_key(path[0], path[1:]) for path in expected}
    wanted = set(sources.values())
    norm_layers = {key.rsplit(".", 1)[0] for key in wanted if key.endswith(".running_mean")}
    unknown = sorted(
        key for key in unprefixed
        if key not in wanted
        and not (key.endswith(".num_batches_tracked") and key.rsplit(".", 1)[0] in norm_layers))
    missing = sorted(wanted - set(unprefixed))
    if unknown or missing:
        raise CheckpointConversionError(
            f"state_dict does not match the E2VID layout of config {config.to_dict()}: "
            f"unknown keys {unknown}; missing keys {missing}.")
    flat, wrong_shapes = {}, []
    for path, abstract in expected.items():
        value = np.asarray(unprefixed[sources[path]], dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        if value.shape != tuple(abstract.shape):
            wrong_shapes.append(f"{sources[path]}: {tuple(unprefixed[sources[path]].shape)}")
        flat[path] = value
    if wrong_shapes:
        raise CheckpointConversionError(f"state_dict tensors of unexpected shape: {', '.join(wrong_shapes)}.")
    return config, flax.traverse_util.unflatten_dict(flat)


def read_torch_checkpoint(path: str | os.PathLike) -> tuple[str | None, dict | None, dict[str, np.ndarray]]:
    """(arch, model config, state_dict as NumPy arrays) of a published or training E2VID checkpoint."""
    try:
        import torch  # only the converter needs PyTorch, and only to unpickle the checkpoint
    except ImportError as error:
        raise ImportError(
            "reading a PyTorch checkpoint needs PyTorch: pip install torch==2.13.0") from error
    if not os.path.isfile(path):
        raise CheckpointConversionError(f"{path}: no such checkpoint file.")
    # The published files are plain pickles of a dict (arch, model config, state_dict), not weights only.
    raw = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(raw, dict) or "state_dict" not in raw:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointConversionError(
            f"{path}: expected a dict with 'arch', 'model' (or 'config': {{'model': ...}}) and 'state_dict' "
            f"as the published E2VID checkpoints; found {found}.")
    model_config = raw.get("model")
    if model_config is None and isinstance(raw.get("config"), dict):
        model_config = raw["config"].get("model")
    state_dict = {key: tensor.detach().cpu().numpy() for key, tensor in raw["state_dict"].items()}
    return raw.get("arch"), model_config, state_dict


def convert_checkpoint(checkpoint_path: str | os.PathLike, out_dir: str | os.PathLike) -> ml_collections.ConfigDict:
    """Converts an E2VID .pth.tar into a save_pretrained directory; returns the config."""
    arch, model_config, state_dict = read_torch_checkpoint(checkpoint_path)
    try:
        config, variables = convert_state_dict(arch, model_config, state_dict)
    except CheckpointConversionError as error:
        raise CheckpointConversionError(f"{checkpoint_path}: {error}") from error
    e2vid.save_pretrained(out_dir, config, variables)
    return config


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m anon_jax.convert.e2vid",
        description="Convert a published E2VID PyTorch checkpoint (e.g. E2VID_lightweight.pth.tar) into an "
                    "anon_jax E2VID directory (Orbax variables + e2vid_config.json) that "
                    "anon_jax.models.e2vid.load_pretrained reads without PyTorch.")
    parser.add_argument("checkpoint", help="the .pth.tar file: a dict with 'arch', 'model' and 'state_dict'")
    parser.add_argument("out_dir", help="directory to write (replaced atomically if it exists)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = convert_checkpoint(args.checkpoint, args.out_dir)
    except (ValueError, ImportError) as error:  # bad checkpoint or config, or no PyTorch: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    count = e2vid.parameter_count(e2vid.abstract_variables(config))
    print(f"wrote {args.out_dir}: {count:,} parameters, config {config.to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
