"""PyTorch builds (float32, NCHW) of anon_jax's networks in the published layouts, and weight copies between them
and Flax variables, so that benchmarks and parity tests run the same function in both frameworks.

E2VID in the published `unet` / `unetrecurrent` state_dict layout, the ICCV'23 anonymizer (ANmodel), the
torchvision-layout ResNet with the paper's ClassBlock head, and torchmetrics 0.11's SSIM.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn as tnn

from anon_jax.convert import e2vid as e2vid_convert


class TorchModelError(ValueError):
    """Flax variables and a PyTorch module do not hold the same tensors (names or shapes)."""


def flax_to_torch_array(value) -> np.ndarray:
    """A Flax kernel in PyTorch's layout: HWIO (and E2VID's (kh, kw, out, in)) -> OIHW (in, out, kh, kw); Dense
    (in, out) -> Linear (out, in); other arrays unchanged."""
    value = np.array(value, np.float32)  # a writable copy: PyTorch tensors share the memory
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value


def torch_to_flax_array(tensor: torch.Tensor) -> jnp.ndarray:
    """The inverse of flax_to_torch_array for a PyTorch tensor."""
    value = tensor.detach().cpu().numpy()
    if value.ndim == 4:
        value = value.transpose(2, 3, 1, 0)
    elif value.ndim == 2:
        value = value.T
    return jnp.asarray(value, jnp.float32)


def load_flax_variables(module: tnn.Module, variables: Mapping, torch_key: Callable[[str, tuple], str]) -> tnn.Module:
    """Copies every Flax variable into `module` (in place) under torch_key(collection, path); returns `module`.

    Every PyTorch parameter and buffer except `num_batches_tracked` must receive a tensor of its shape.
    """
    tensors = {}
    for (collection, *path), value in traverse_util.flatten_dict(dict(variables)).items():
        tensors[torch_key(collection, tuple(path))] = flax_to_torch_array(value)
    state = module.state_dict()
    unknown = sorted(set(tensors) - set(state))
    missing = sorted(k for k in state if k not in tensors and not k.endswith("num_batches_tracked"))
    wrong = sorted(f"{k}: {tensors[k].shape} vs {tuple(state[k].shape)}" for k in tensors
                   if k in state and tensors[k].shape != tuple(state[k].shape))
    if unknown or missing or wrong:
        raise TorchModelError(f"Flax variables do not fit {type(module).__name__}: keys without a PyTorch tensor "
                              f"{unknown}; PyTorch tensors without a Flax variable {missing}; shapes (Flax as "
                              f"PyTorch vs PyTorch) {wrong}. Build the PyTorch model with the Flax model's config.")
    state.update({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in tensors.items()})
    module.load_state_dict(state)
    return module


# ---------------------------------------------------------------------------------------------------- E2VID
class TorchConvLayer(tnn.Module):
    def __init__(self, cin, cout, kernel, stride=1, norm="none", relu=True):
        super().__init__()
        self.conv2d = tnn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=norm != "BN")
        if norm == "BN":
            self.norm_layer = tnn.BatchNorm2d(cout)
        elif norm == "IN":
            self.norm_layer = tnn.InstanceNorm2d(cout, track_running_stats=True)
        self.norm, self.relu = norm, relu

    def forward(self, x):
        x = self.conv2d(x)
        if self.norm != "none":
            x = self.norm_layer(x)
        return torch.relu(x) if self.relu else x


class TorchConvLSTM(tnn.Module):
    def __init__(self, channels):
        super().__init__()
        self.Gates = tnn.Conv2d(2 * channels, 4 * channels, 3, padding=1)

    def forward(self, x, state):
        # As published: a missing state is a zero tensor that still goes through the whole gate conv.
        if state is None:
            state = (torch.zeros_like(x), torch.zeros_like(x))
        hidden, cell = state
        i, f, o, g = self.Gates(torch.cat([x, hidden], 1)).chunk(4, 1)
        cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
        hidden = torch.sigmoid(o) * torch.tanh(cell)
        return hidden, (hidden, cell)


class TorchConvGRU(tnn.Module):
    def __init__(self, channels):
        super().__init__()
        self.reset_gate = tnn.Conv2d(2 * channels, channels, 3, padding=1)
        self.update_gate = tnn.Conv2d(2 * channels, channels, 3, padding=1)
        self.out_gate = tnn.Conv2d(2 * channels, channels, 3, padding=1)

    def forward(self, x, hidden):
        if hidden is None:
            hidden = torch.zeros_like(x)
        stacked = torch.cat([x, hidden], 1)
        update = torch.sigmoid(self.update_gate(stacked))
        reset = torch.sigmoid(self.reset_gate(stacked))
        candidate = torch.tanh(self.out_gate(torch.cat([x, hidden * reset], 1)))
        hidden = hidden * (1 - update) + candidate * update
        return hidden, hidden


class TorchRecurrentConvLayer(tnn.Module):
    def __init__(self, cin, cout, norm, block):
        super().__init__()
        self.conv = TorchConvLayer(cin, cout, 5, 2, norm)
        self.recurrent_block = TorchConvLSTM(cout) if block == "convlstm" else TorchConvGRU(cout)

    def forward(self, x, state):
        return self.recurrent_block(self.conv(x), state)


class TorchResidualBlock(tnn.Module):
    def __init__(self, channels, norm):
        super().__init__()
        # Registration order conv1, bn1, bn2, conv2 gives the published state_dict order.
        self.conv1 = tnn.Conv2d(channels, channels, 3, 1, 1, bias=norm != "BN")
        if norm == "BN":
            self.bn1, self.bn2 = tnn.BatchNorm2d(channels), tnn.BatchNorm2d(channels)
        elif norm == "IN":
            self.bn1, self.bn2 = tnn.InstanceNorm2d(channels), tnn.InstanceNorm2d(channels)
        self.conv2 = tnn.Conv2d(channels, channels, 3, 1, 1, bias=norm != "BN")
        self.norm = norm

    def forward(self, x):
        out = self.conv1(x)
        out = torch.relu(self.bn1(out) if self.norm != "none" else out)
        out = self.conv2(out)
        out = self.bn2(out) if self.norm != "none" else out
        return torch.relu(out + x)


class TorchDecoder(tnn.Module):
    def __init__(self, cin, cout, decoder, norm):
        super().__init__()
        if decoder == "transposed":
            self.transposed_conv2d = tnn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1,
                                                         bias=norm != "BN")
        else:
            self.conv2d = tnn.Conv2d(cin, cout, 5, 1, 2, bias=norm != "BN")
        if norm == "BN":
            self.norm_layer = tnn.BatchNorm2d(cout)
        elif norm == "IN":
            self.norm_layer = tnn.InstanceNorm2d(cout, track_running_stats=True)
        self.decoder, self.norm = decoder, norm

    def forward(self, x):
        if self.decoder == "transposed":
            x = self.transposed_conv2d(x)
        else:
            x = self.conv2d(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        return torch.relu(self.norm_layer(x) if self.norm != "none" else x)


class TorchUNet(tnn.Module):
    """E2VID's UNet / UNetRecurrent for an anon_jax E2VID config: `forward(voxels, states) -> (image, states)`."""

    def __init__(self, c):
        super().__init__()
        base, levels, widen = c["base_channels"], c["num_encoders"], 2 if c["skip"] == "concat" else 1
        self.recurrent, self.skip = c["recurrent"], c["skip"]
        self.head = TorchConvLayer(c["num_bins"], base, 5)
        self.encoders = tnn.ModuleList(
            TorchRecurrentConvLayer(base * 2**i, base * 2 ** (i + 1), c["norm"], c["recurrent_block"])
            if c["recurrent"] else TorchConvLayer(base * 2**i, base * 2 ** (i + 1), 5, 2, c["norm"])
            for i in range(levels))
        self.resblocks = tnn.ModuleList(
            TorchResidualBlock(base * 2**levels, c["norm"]) for _ in range(c["num_residual_blocks"]))
        self.decoders = tnn.ModuleList(
            TorchDecoder(widen * base * 2 ** (levels - i), base * 2 ** (levels - i - 1), c["decoder"], c["norm"])
            for i in range(levels))
        self.pred = TorchConvLayer(widen * base, 1, 1, norm=c["norm"], relu=False)

    def _skip(self, x, skipped):
        return x + skipped if self.skip == "sum" else torch.cat([x, skipped], 1)

    def forward(self, x, states=None):
        x = head = self.head(x)
        states = states or [None] * len(self.encoders)
        skips, new_states = [], []
        for encoder, state in zip(self.encoders, states):
            if self.recurrent:
                x, state = encoder(x, state)
                new_states.append(state)
            else:
                x = encoder(x)
            skips.append(x)
        for block in self.resblocks:
            x = block(x)
        for i, decoder in enumerate(self.decoders):
            x = decoder(self._skip(x, skips[-1 - i]))
        return torch.sigmoid(self.pred(self._skip(x, head))), new_states


def torch_e2vid(config, seed: int) -> tnn.Module:
    """A random PyTorch E2VID checkpoint model (UNet under `unet` / `unetrecurrent`, as published) in eval mode,
    with non-trivial norm parameters and running statistics."""
    torch.manual_seed(seed)
    model = tnn.Module()
    setattr(model, "unetrecurrent" if config["recurrent"] else "unet", TorchUNet(dict(config)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (tnn.BatchNorm2d, tnn.InstanceNorm2d)) and module.track_running_stats:
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(1234)
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
    return model.eval()


def e2vid_from_flax(config, variables) -> TorchUNet:
    """A TorchUNet (eval mode) computing what anon_jax's E2VID(config) computes with `variables`."""
    return load_flax_variables(TorchUNet(dict(config)), variables, e2vid_convert.torch_key).eval()


# ---------------------------------------------------------------------------------------------------- anonymizer
# Conv2d positions in the ANmodel Sequential -> PublishedAnonymizer module names.
ANONYMIZER_CONVS = {0: "encoder_conv1", 3: "encoder_conv2", 7: "decoder_conv1", 10: "decoder_conv2"}


def torch_anmodel(num_bins: int = 5) -> tnn.Sequential:
    """The ICCV'23 ANmodel as listed in the reference notes (encoder e0..e5, decoder d0..d5)."""
    return tnn.Sequential(
        tnn.Conv2d(num_bins, 64, 3, 1, 1), tnn.ReLU(), tnn.MaxPool2d(2, 1),
        tnn.Conv2d(64, 16, 3, 1, 1), tnn.ReLU(), tnn.MaxPool2d(2, 1),
        tnn.Upsample(scale_factor=1), tnn.Conv2d(16, 64, 3, 1, 1), tnn.ReLU(),
        tnn.Upsample(scale_factor=1), tnn.Conv2d(64, num_bins, 3, 1, 2), tnn.Sigmoid())


def anonymizer_params_from_torch(model: tnn.Sequential) -> dict:
    """PublishedAnonymizer params holding an ANmodel's weights."""
    return {name: {"kernel": torch_to_flax_array(model[i].weight), "bias": torch_to_flax_array(model[i].bias)}
            for i, name in ANONYMIZER_CONVS.items()}


def anonymizer_from_flax(params) -> tnn.Sequential:
    """An ANmodel computing what PublishedAnonymizer computes with `params` (its "params" collection)."""
    keys = {name: str(i) for i, name in ANONYMIZER_CONVS.items()}
    leaves = {"kernel": "weight", "bias": "bias"}
    num_bins = params["encoder_conv1"]["kernel"].shape[2]
    return load_flax_variables(torch_anmodel(num_bins), {"params": params},
                               lambda collection, path: f"{keys[path[0]]}.{leaves[path[1]]}")


# ---------------------------------------------------------------------------------------------------- ReId
class TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = _torch_downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.downsample = _torch_downsample(inplanes, planes * self.expansion, stride)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


def _torch_downsample(inplanes, outplanes, stride):
    if stride == 1 and inplanes == outplanes:
        return None
    return tnn.Sequential(tnn.Conv2d(inplanes, outplanes, 1, stride, bias=False), tnn.BatchNorm2d(outplanes))


TORCH_STAGE_BLOCKS = {18: ((2, 2, 2, 2), TorchBasicBlock), 34: ((3, 4, 6, 3), TorchBasicBlock),
                      50: ((3, 4, 6, 3), TorchBottleneck), 101: ((3, 4, 23, 3), TorchBottleneck),
                      152: ((3, 8, 36, 3), TorchBottleneck)}


class TorchResNet(tnn.Module):
    """torchvision's ResNet trunk (optional fc for parameter counts); forward returns the pooled feature."""

    def __init__(self, blocks, block, in_channels=3, last_stride=2, num_fc=None, width=64):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        inplanes = width
        for stage, (count, stride) in enumerate(zip(blocks, (1, 2, 2, last_stride))):
            planes = width * 2**stage
            layers = []
            for index in range(count):
                layers.append(block(inplanes, planes, stride if index == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage + 1}", tnn.Sequential(*layers))
        self.fc = tnn.Linear(inplanes, num_fc) if num_fc else None

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))


class TorchClassBlock(tnn.Module):
    def __init__(self, input_dim, num_classes, bottleneck=256):
        super().__init__()
        self.add_block = tnn.Sequential(tnn.Linear(input_dim, bottleneck), tnn.BatchNorm1d(bottleneck))
        self.classifier = tnn.Linear(bottleneck, num_classes)

    def forward(self, x):
        embed = F.leaky_relu(self.add_block(x), 0.5)
        return self.classifier(embed), embed


class TorchReId(tnn.Module):
    """ResNet trunk + ClassBlock: forward returns {"logits", "embed", "pool5"} as anon_jax's ReIdNetwork."""

    def __init__(self, num_classes, in_channels, depth=18, width=64, last_stride=1, embed_dim=256):
        super().__init__()
        blocks, block = TORCH_STAGE_BLOCKS[depth]
        self.model = TorchResNet(blocks, block, in_channels=in_channels, last_stride=last_stride, width=width)
        self.classifier = TorchClassBlock(8 * width * block.expansion, num_classes, embed_dim)

    def forward(self, x):
        pool5 = self.model(x)
        logits, embed = self.classifier(pool5)
        return {"logits": logits, "embed": embed, "pool5": pool5}


_REID_RENAMED = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1", "embed_dense": "add_block.0",
                 "embed_bn": "add_block.1", "logits_dense": "classifier"}
_REID_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def reid_torch_key(flax_path) -> str:
    """The TorchReId state_dict key of a ReIdNetwork variable path (without the collection)."""
    scope, *inner, leaf = flax_path
    prefix = "model" if scope == "backbone" else "classifier"
    parts = [_REID_RENAMED.get(p, p.replace("_", ".")) for p in inner]
    return ".".join([prefix, *parts, _REID_LEAVES[leaf]])


def reid_variables_from_torch(torch_model: TorchReId, abstract_variables) -> dict:
    """ReIdNetwork variables (shaped as `abstract_variables`) holding a TorchReId's weights."""
    state = torch_model.state_dict()
    converted = {}
    for collection, tree in abstract_variables.items():
        flat = {}
        for path, value in traverse_util.flatten_dict(tree).items():
            flat[path] = torch_to_flax_array(state[reid_torch_key(path)])
            if flat[path].shape != value.shape:
                raise TorchModelError(f"{reid_torch_key(path)} of shape {flat[path].shape} does not fit {path} "
                                      f"of shape {value.shape}.")
        converted[collection] = traverse_util.unflatten_dict(flat)
    return converted


def reid_from_flax(network, variables) -> TorchReId:
    """A TorchReId (train mode, as a fresh module) computing what the ReIdNetwork `network` computes."""
    if network.head != "classblock":
        raise TorchModelError(f"ReIdNetwork head={network.head!r}: only the paper's 'classblock' head has a "
                              "PyTorch build here.")
    in_channels = variables["params"]["backbone"]["conv1"]["kernel"].shape[2]
    model = TorchReId(network.num_classes, in_channels, depth=network.depth, width=network.width,
                      last_stride=network.last_stride, embed_dim=network.embed_dim)
    return load_flax_variables(model, variables, lambda collection, path: reid_torch_key(path))


# ---------------------------------------------------------------------------------------------------- SSIM
def torch_ssim(preds: torch.Tensor, target: torch.Tensor, data_range=None) -> torch.Tensor:
    """Per-image SSIM of NCHW tensors following torchmetrics 0.11.0 step by step (differentiable)."""
    if data_range is None:
        range_p, range_t = preds.max() - preds.min(), target.max() - target.min()
        data_range = torch.where(range_t > range_p, range_t, range_p)  # max(), the first one on ties
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    channels = preds.shape[1]
    dist = torch.arange(-5, 6, dtype=preds.dtype)
    gauss = torch.exp(-((dist / 1.5) ** 2) / 2)
    gauss = (gauss / gauss.sum())[None]
    kernel = (gauss.t() @ gauss).expand(channels, 1, 11, 11)
    preds = F.pad(preds, (5, 5, 5, 5), mode="reflect")
    target = F.pad(target, (5, 5, 5, 5), mode="reflect")
    stacked = torch.cat((preds, target, preds * preds, target * target, preds * target))
    mu_p, mu_t, e_pp, e_tt, e_pt = F.conv2d(stacked, kernel, groups=channels).split(preds.shape[0])
    upper = 2 * (e_pt - mu_p * mu_t) + c2
    lower = (e_pp - mu_p**2) + (e_tt - mu_t**2) + c2
    full = ((2 * mu_p * mu_t + c1) * upper) / ((mu_p**2 + mu_t**2 + c1) * lower)
    return full[..., 5:-5, 5:-5].reshape(full.shape[0], -1).mean(-1)


def to_nchw(array) -> torch.Tensor:
    """A float32 PyTorch NCHW tensor of an NHWC array."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array, np.float32).transpose(0, 3, 1, 2)))


def to_nhwc(tensor: torch.Tensor) -> np.ndarray:
    """The NHWC NumPy array of an NCHW tensor."""
    return tensor.detach().numpy().transpose(0, 2, 3, 1)


def tree_max_difference(flax_tree, torch_tree) -> float:
    """Max |a - b| over matching leaves of a JAX pytree and an equally structured pytree of NCHW tensors."""
    torch_leaves = [to_nhwc(t) for t in jax.tree_util.tree_leaves(torch_tree)]
    flax_leaves = jax.tree_util.tree_leaves(flax_tree)
    if len(torch_leaves) != len(flax_leaves):
        raise TorchModelError(f"{len(flax_leaves)} Flax leaves vs {len(torch_leaves)} PyTorch leaves.")
    return max(float(np.max(np.abs(np.asarray(a) - b))) for a, b in zip(flax_leaves, torch_leaves))
