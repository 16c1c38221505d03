"""AGW tests: parameter counts and forward parity against a PyTorch AGW written from the reference facts, the
non-local block, GeM, the frozen BNNeck shift, ImageNet trunk import, the WRT and centre losses against PyTorch
twins, and RandomIdentitySampler's invariants."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch import nn as tnn

from anon_jax import losses
from anon_jax.convert import torchvision_resnet
from anon_jax.data import pipeline
from anon_jax.models import agw, reid
from benchmarks.torch_models import TORCH_STAGE_BLOCKS, TorchResNet, torch_to_flax_array

NUM_CLASSES = 7
WIDTH = 4
INPUT = (2, 64, 32, 3)


# ---------------------------------------------------------------------------------------------- PyTorch twin
class TorchNonLocal(tnn.Module):
    """z = x + BN(W(y)), y = (theta^T phi / N) g with 1x1 convs (bias) to `inter` channels; BN starts at 0."""

    def __init__(self, channels, inter):
        super().__init__()
        self.inter = inter
        self.theta = tnn.Conv2d(channels, inter, 1)
        self.phi = tnn.Conv2d(channels, inter, 1)
        self.g = tnn.Conv2d(channels, inter, 1)
        self.W = tnn.Sequential(tnn.Conv2d(inter, channels, 1), tnn.BatchNorm2d(channels))
        tnn.init.zeros_(self.W[1].weight)
        tnn.init.zeros_(self.W[1].bias)

    def forward(self, x):
        batch, _, height, width = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2).transpose(1, 2)
        affinity = theta @ phi / (height * width)
        y = (affinity @ g).transpose(1, 2).reshape(batch, self.inter, height, width)
        return x + self.W(y)


class TorchGeM(tnn.Module):
    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p = tnn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class TorchAGWBase(tnn.Module):
    """ResNet-50 (torchvision layout) with non-local blocks after the last n blocks of each stage."""

    def __init__(self, width, one_channel, stem_relu, nonlocal_blocks=(0, 2, 3, 0)):
        super().__init__()
        blocks, block = TORCH_STAGE_BLOCKS[50]
        self.stem_relu = stem_relu
        self.conv1 = tnn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(width)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        inplanes = width
        self.nonlocal_after = []
        for stage, (count, stride) in enumerate(zip(blocks, (1, 2, 2, 1))):
            planes = width * 2**stage
            layers = []
            for index in range(count):
                layers.append(block(inplanes, planes, stride if index == 0 else 1))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage + 1}", tnn.Sequential(*layers))
            inter = 1 if one_channel else inplanes // 2
            setattr(self, f"NL_{stage + 1}",
                    tnn.ModuleList(TorchNonLocal(inplanes, inter) for _ in range(nonlocal_blocks[stage])))
            self.nonlocal_after.append(list(range(count - nonlocal_blocks[stage], count)))

    def forward(self, x):
        x = self.bn1(self.conv1(x))
        x = self.maxpool(torch.relu(x) if self.stem_relu else x)
        for stage in range(4):
            nonlocal_blocks = getattr(self, f"NL_{stage + 1}")
            for index, block in enumerate(getattr(self, f"layer{stage + 1}")):
                x = block(x)
                if index in self.nonlocal_after[stage]:
                    x = nonlocal_blocks[self.nonlocal_after[stage].index(index)](x)
        return x


class TorchAGW(tnn.Module):
    """Trunk, GeM, BatchNorm1d with a frozen shift, bias-free classifier; train -> (logits, features), eval -> BN."""

    def __init__(self, num_classes, width=64, one_channel=True, stem_relu=False):
        super().__init__()
        self.base = TorchAGWBase(width, one_channel, stem_relu)
        self.gap = TorchGeM()
        self.bottleneck = tnn.BatchNorm1d(8 * width * 4)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = tnn.Linear(8 * width * 4, num_classes, bias=False)
        tnn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, x):
        features = self.gap(self.base(x))
        normalised = self.bottleneck(features)
        if not self.training:
            return normalised
        return self.classifier(normalised), features


_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_NONLOCAL_PARTS = {"theta": "theta", "phi": "phi", "g": "g", "w_conv": "W.0", "w_bn": "W.1"}


def agw_torch_key(collection, path):
    """The TorchAGW state_dict key of an AGWNetwork variable."""
    scope, *inner = path
    if scope == "pool":
        return "gap.p"
    if scope == "head":
        return "bottleneck." + _LEAVES[inner[-1]] if inner[0] == "embed_bn" else "classifier.weight"
    if inner[0].startswith(agw.NONLOCAL_PREFIX):
        stage, index = map(int, inner[0][len(agw.NONLOCAL_PREFIX) + len("layer"):].split("_"))
        first = reid.STAGE_BLOCKS[50][stage - 1] - agw.AGW_NONLOCAL_BLOCKS[stage - 1]
        return f"base.NL_{stage}.{index - first}.{_NONLOCAL_PARTS[inner[1]]}.{_LEAVES[inner[2]]}"
    return "base." + torchvision_resnet.torch_key(collection, inner)


def flax_variables_from_torch(model, abstract):
    state = model.state_dict()
    flat = {}
    for (collection, *path), target in traverse_util.flatten_dict(abstract).items():
        value = torch_to_flax_array(state[agw_torch_key(collection, path)])
        assert value.shape == target.shape, (path, value.shape, target.shape)
        flat[(collection, *path)] = value
    return traverse_util.unflatten_dict(flat)


def _abstract(network, shape=INPUT):
    return jax.eval_shape(lambda: network.init(jax.random.key(0), jnp.zeros(shape), train=False))


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def _randomise(model):
    """Non-trivial BN affine parameters and statistics (the non-local BN included, so the blocks do something)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (tnn.BatchNorm1d, tnn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5)
                if module is not model.bottleneck:
                    module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
        model.classifier.weight.normal_(0.0, 0.1)
        model.gap.p.fill_(2.5)
    return model


# ---------------------------------------------------------------------------------------------- network
@pytest.mark.parametrize("one_channel, total", [(True, 25_076_816), (False, 32_406_593)])
def test_parameter_counts_match_the_torch_twin(one_channel, total):
    network = agw.AGWNetwork(751, nonlocal_one_channel=one_channel)
    variables = _abstract(network, (1, 256, 128, 3))
    torch_model = TorchAGW(751, one_channel=one_channel)
    trainable = sum(p.numel() for p in torch_model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in torch_model.parameters() if not p.requires_grad)
    # ResNet-50 without fc 23,508,032; 5 non-local blocks (7C + 3 each with one channel); GeM p; BN scale; classifier.
    assert _count(variables["params"]) == trainable == total
    assert frozen == 2048  # the BNNeck shift: a frozen zero in PyTorch, absent here
    buffers = sum(b.numel() for n, b in torch_model.named_buffers() if not n.endswith("num_batches_tracked"))
    assert _count(variables["batch_stats"]) == buffers
    if one_channel:
        assert _count(variables["params"]["backbone"]) == 23_508_032 + 2 * (7 * 512 + 3) + 3 * (7 * 1024 + 3)


def test_eval_forward_matches_torch_with_the_original_quirks():
    torch_model = _randomise(TorchAGW(NUM_CLASSES, WIDTH, one_channel=True, stem_relu=False)).double().eval()
    network = agw.AGWNetwork(NUM_CLASSES, width=WIDTH, nonlocal_one_channel=True)
    variables = flax_variables_from_torch(torch_model, _abstract(network))
    assert variables["params"]["backbone"]["nonlocal_layer3_5"]["theta"]["kernel"].shape == (1, 1, 64, 1)
    x = np.random.default_rng(0).normal(size=INPUT)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    outputs = jax.jit(lambda v, x: network.apply(v, x, train=False))(variables, jnp.asarray(x, jnp.float32))
    assert outputs.shape == (2, 8 * WIDTH * 4) and outputs.dtype == jnp.float32
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)


def test_train_forward_matches_torch_with_half_width_embeddings_and_relu_stem():
    torch_model = _randomise(TorchAGW(NUM_CLASSES, WIDTH, one_channel=False, stem_relu=True)).double().train()
    network = agw.AGWNetwork(NUM_CLASSES, width=WIDTH, stem_relu=True)
    variables = flax_variables_from_torch(torch_model, _abstract(network))
    assert variables["params"]["backbone"]["nonlocal_layer2_2"]["g"]["kernel"].shape == (1, 1, 32, 16)
    x = np.random.default_rng(1).normal(size=(3, *INPUT[1:]))
    with torch.no_grad():
        logits, features = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    outputs, updates = jax.jit(lambda v, x: network.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(x, jnp.float32))
    assert set(outputs) == {"logits", "features"}
    # The batch norms over 3 samples amplify float32 rounding (PyTorch runs in float64 here), and XLA's threaded CPU
    # convolutions do not always sum in the same order: features have differed from run to run by up to 4e-4.
    np.testing.assert_allclose(outputs["features"], features.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(outputs["logits"], logits.numpy(), rtol=1e-3, atol=1e-3)
    # Running statistics follow PyTorch's (momentum 0.1, unbiased variance), the non-local BN's included.
    for flax_stats, torch_bn in ((updates["batch_stats"]["backbone"]["nonlocal_layer3_4"]["w_bn"],
                                  torch_model.base.NL_3[1].W[1]),
                                 (updates["batch_stats"]["head"]["embed_bn"], torch_model.bottleneck)):
        np.testing.assert_allclose(flax_stats["mean"], torch_bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(flax_stats["var"], torch_bn.running_var.numpy(), rtol=1e-4, atol=1e-5)


def test_initial_values():
    # Module by module: a whole-network init compiles the forward pass as well, for many seconds on a CPU.
    names = set(_abstract(agw.AGWNetwork(NUM_CLASSES, width=WIDTH))["params"]["backbone"])
    assert {name for name in names if name.startswith(agw.NONLOCAL_PREFIX)} == {
        "nonlocal_layer2_2", "nonlocal_layer2_3", "nonlocal_layer3_3", "nonlocal_layer3_4", "nonlocal_layer3_5"}
    block = jax.jit(lambda key: agw.NonLocalBlock(1).init(key, jnp.zeros((1, 2, 2, 32)), train=False))(
        jax.random.key(1))["params"]
    assert not np.any(block["w_bn"]["scale"]) and not np.any(block["w_bn"]["bias"])
    # PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 32 channels for theta, 1 for W.
    for leaf in (block["theta"]["kernel"], block["theta"]["bias"]):
        assert np.abs(leaf).max() <= 1 / np.sqrt(32)
    assert 1 / np.sqrt(32) < np.abs(block["w_conv"]["kernel"]).max() <= 1.0
    gem = agw.GeneralizedMeanPooling().init(jax.random.key(0), jnp.ones((1, 2, 2, 3)))["params"]
    np.testing.assert_array_equal(gem["p"], [3.0])
    head = jax.jit(lambda key: reid.BNNeck(500).init(key, jnp.zeros((2, 128)), train=False))(jax.random.key(2))
    np.testing.assert_array_equal(head["params"]["embed_bn"]["scale"], np.ones(128))
    kernel = np.asarray(head["params"]["logits_dense"]["kernel"])
    assert kernel.shape == (128, 500) and abs(kernel.std() - 0.001) < 0.00005 and abs(kernel.mean()) < 0.00002


@pytest.mark.parametrize("train", [False, True])
def test_nonlocal_block_is_the_identity_at_init(train):
    block = agw.NonLocalBlock(inter_channels=3)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 3, 6)), jnp.float32)
    variables = block.init(jax.random.key(0), x, train=False)
    out = block.apply(variables, x, train=train, mutable=["batch_stats"])[0] if train else \
        block.apply(variables, x, train=False)
    np.testing.assert_array_equal(out, x)


def test_nonlocal_block_matches_torch_with_nonzero_bn():
    torch_block = TorchNonLocal(6, 3).double()
    with torch.no_grad():
        torch_block.W[1].weight.uniform_(0.5, 1.5)
        torch_block.W[1].bias.uniform_(-0.5, 0.5)
    torch_block.train()
    x = np.random.default_rng(3).normal(size=(2, 4, 3, 6))
    with torch.no_grad():
        expected = torch_block(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    names = {"theta": "theta", "phi": "phi", "g": "g", "w_conv": "W.0", "w_bn": "W.1"}
    abstract = jax.eval_shape(lambda: agw.NonLocalBlock(3).init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    state = torch_block.state_dict()
    variables = traverse_util.unflatten_dict({
        (collection, module, leaf): torch_to_flax_array(state[f"{names[module]}.{_LEAVES[leaf]}"])
        for (collection, module, leaf) in traverse_util.flatten_dict(abstract)})
    out, _ = agw.NonLocalBlock(3).apply(variables, jnp.asarray(x, jnp.float32), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_gem_value_by_hand_and_gradient_of_p():
    # One channel, 2x2 map: values 1, 2, 3 and a negative one clamped to eps; p = 3.
    feature_map = jnp.asarray([[[[1.0], [2.0]], [[3.0], [-5.0]]]])
    gem = agw.GeneralizedMeanPooling()
    variables = gem.init(jax.random.key(0), feature_map)
    expected = ((1 + 8 + 27 + 1e-18) / 4) ** (1 / 3)
    np.testing.assert_allclose(gem.apply(variables, feature_map), [[expected]], rtol=1e-6)
    gradient = jax.grad(lambda v: gem.apply(v, feature_map).sum())(variables)["params"]["p"]
    torch_gem = TorchGeM().double()
    torch_map = torch.tensor([1.0, 2.0, 3.0, -5.0], dtype=torch.float64).reshape(1, 1, 2, 2)
    torch_gem(torch_map).sum().backward()
    np.testing.assert_allclose(gradient, torch_gem.p.grad.numpy(), rtol=1e-4)


def test_bnneck_shift_is_frozen():
    network = agw.AGWNetwork(NUM_CLASSES, width=WIDTH)
    head_params = traverse_util.flatten_dict(_abstract(network)["params"]["head"])
    # No shift parameter: nothing an optimizer (or its weight decay) updates.
    assert set(head_params) == {("embed_bn", "scale"), ("logits_dense", "kernel")}
    head = reid.BNNeck(NUM_CLASSES)
    features = jnp.asarray(np.random.default_rng(4).normal(2.0, 1.0, size=(6, 16)), jnp.float32)
    variables = head.init(jax.random.key(0), features, train=False)
    embed = head.apply(variables, features, train=True, mutable=["batch_stats"])[0]["embed"]
    np.testing.assert_allclose(np.mean(embed, axis=0), 0.0, atol=1e-5)  # the shift stays 0
    gradients = jax.grad(lambda p: jnp.sum(head.apply({**variables, "params": p}, features, train=True,
                                                     mutable=["batch_stats"])[0]["logits"] ** 2))(variables["params"])
    assert set(traverse_util.flatten_dict(gradients)) == set(head_params)


def test_imagenet_trunk_import():
    blocks, block = TORCH_STAGE_BLOCKS[50]
    torch_trunk = TorchResNet(blocks, block, in_channels=3, last_stride=2, num_fc=5, width=WIDTH)
    state = {key: value.numpy() for key, value in torch_trunk.state_dict().items()}
    network = agw.AGWNetwork(NUM_CLASSES, width=WIDTH)
    abstract = _abstract(network)
    variables = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, 0.25, a.dtype), abstract)
    loaded = agw.imagenet_agw_variables(variables, state)
    params, stats = loaded["params"]["backbone"], loaded["batch_stats"]["backbone"]
    np.testing.assert_array_equal(params["conv1"]["kernel"], state["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["layer3_5"]["bn3"]["scale"], state["layer3.5.bn3.weight"])
    np.testing.assert_array_equal(stats["layer2_0"]["downsample_bn"]["mean"],
                                  state["layer2.0.downsample.1.running_mean"])
    for name in ("nonlocal_layer2_3", "nonlocal_layer3_5"):
        for leaf in jax.tree_util.tree_leaves(params[name]):
            np.testing.assert_array_equal(leaf, 0.25)
    for scope in ("pool", "head"):
        for leaf in jax.tree_util.tree_leaves(loaded["params"][scope]):
            np.testing.assert_array_equal(leaf, 0.25)
    wider = {key: value.numpy() for key, value in
             TorchResNet(blocks, block, in_channels=3, width=2 * WIDTH).state_dict().items()}
    with pytest.raises(torchvision_resnet.TorchvisionConversionError, match="shapes"):
        agw.imagenet_agw_variables(variables, wider)


def test_build_agw_network_and_bad_values():
    config = ml_collections.ConfigDict(dict(depth=50, width=8, last_stride=1, stem_relu=False,
                                            nonlocal_blocks=(0, 2, 3, 0), nonlocal_one_channel=True))
    network = agw.build_agw_network(config, np.int64(11))
    assert (network.num_classes, network.width, network.nonlocal_one_channel) == (11, 8, True)
    config.nonlocal_blocks = (0, 5, 3, 0)
    with pytest.raises(agw.AGWNetworkError, match=r"nonlocal_blocks=\(0, 5, 3, 0\)"):
        agw.build_agw_network(config, 11)
    del config.stem_relu
    with pytest.raises(agw.AGWNetworkError, match="stem_relu"):
        agw.build_agw_network(config, 11)
    with pytest.raises(agw.AGWNetworkError, match="rank 4"):
        agw.AGWNetwork(3, width=WIDTH).init(jax.random.key(0), jnp.zeros((32, 16, 3)), train=False)


# ---------------------------------------------------------------------------------------------- losses
def torch_weighted_regularized_triplet(features, labels):
    """A.6: Gram-matrix distances clamped at 1e-12, masked softmax weights shifted by the row max of
    distances * mask with 1e-6 added to Z, SoftMarginLoss(d- - d+, 1)."""
    squared = features.pow(2).sum(1, keepdim=True)
    distances = (squared + squared.t() - 2 * features @ features.t()).clamp(min=1e-12).sqrt()
    positive = labels[:, None].eq(labels[None, :]).to(features.dtype)
    negative = 1 - positive

    def weights(values, mask):
        shifted = values - (values * mask).max(dim=1, keepdim=True)[0]
        exp = torch.exp(shifted) * mask
        return exp / (exp.sum(dim=1, keepdim=True) + 1e-6)

    d_ap, d_an = distances * positive, distances * negative
    furthest = (d_ap * weights(d_ap, positive)).sum(1)
    closest = (d_an * weights(-d_an, negative)).sum(1)
    return F.soft_margin_loss(closest - furthest, torch.ones_like(closest))


def torch_centre_loss(features, labels, centres):
    """A.6: the full (B, K) expansion distance matrix, masked to the own class, clamped to [1e-12, 1e12], / B."""
    distances = (features.pow(2).sum(1, keepdim=True) + centres.pow(2).sum(1)[None, :]
                 - 2 * features @ centres.t())
    mask = labels[:, None].eq(torch.arange(centres.shape[0])[None, :]).to(features.dtype)
    return (distances * mask).clamp(min=1e-12, max=1e12).sum() / features.shape[0]


def _loss_inputs(scale=1.0):
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 3)
    features = rng.normal(size=(12, 16)) * scale + labels[:, None] * 0.3
    centres = rng.normal(size=(6, 16))
    return features, labels, centres


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_weighted_regularized_triplet_matches_torch(scale):
    features, labels, _ = _loss_inputs(scale)
    expected = torch_weighted_regularized_triplet(torch.tensor(features, dtype=torch.float32), torch.tensor(labels))
    value = losses.weighted_regularized_triplet(jnp.asarray(features, jnp.float32), labels)
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    # Gradients in float64, where the diagonal's Gram distance is clamped in both (float32 rounding noise there
    # takes a huge square-root derivative in PyTorch and here alike).
    torch_features = torch.tensor(features, dtype=torch.float64, requires_grad=True)
    torch_weighted_regularized_triplet(torch_features, torch.tensor(labels)).backward()
    with jax.enable_x64(True):
        gradient = jax.grad(losses.weighted_regularized_triplet)(jnp.asarray(features, jnp.float64), labels)
        np.testing.assert_allclose(gradient, torch_features.grad.numpy(), rtol=1e-6, atol=1e-9)


def test_weighted_regularized_triplet_by_hand():
    # Two identities on a line: f = 0, 1 (id 0) and 3, 5 (id 1). Anchor 0: positives {0 (d=1e-6), 1 (d=1)},
    # negatives {3, 5}.
    features = np.array([[0.0], [1.0], [3.0], [5.0]])
    labels = np.array([0, 0, 1, 1])
    d = np.abs(features - features.T)
    np.fill_diagonal(d, 1e-6)
    total = 0.0
    for i in range(4):
        pos, neg = labels == labels[i], labels != labels[i]
        shift = (d[i] * pos).max()
        w_pos = np.exp(d[i] - shift) * pos / ((np.exp(d[i] - shift) * pos).sum() + 1e-6)
        w_neg = np.exp(-d[i]) * neg / ((np.exp(-d[i]) * neg).sum() + 1e-6)  # shift = max(0, -D) = 0
        total += np.log1p(np.exp((d[i] * w_pos).sum() - (d[i] * w_neg).sum()))
    np.testing.assert_allclose(losses.weighted_regularized_triplet(features, labels), total / 4, rtol=1e-5)


def test_centre_loss_matches_torch_and_hand_value():
    features, labels, centres = _loss_inputs()
    torch_features = torch.tensor(features, dtype=torch.float64, requires_grad=True)
    torch_centres = torch.tensor(centres, dtype=torch.float64, requires_grad=True)
    expected = torch_centre_loss(torch_features, torch.tensor(labels), torch_centres)
    expected.backward()
    value = losses.centre_loss(jnp.asarray(features, jnp.float32), labels, jnp.asarray(centres, jnp.float32))
    np.testing.assert_allclose(value, expected.item(), rtol=1e-5)
    by_hand = np.mean(np.sum((features - centres[labels]) ** 2, axis=1)) + 5 * 1e-12
    np.testing.assert_allclose(value, by_hand, rtol=1e-5)
    with jax.enable_x64(True):
        grad_features, grad_centres = jax.grad(losses.centre_loss, argnums=(0, 2))(
            jnp.asarray(features), labels, jnp.asarray(centres))
        np.testing.assert_allclose(grad_features, torch_features.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grad_centres, torch_centres.grad.numpy(), rtol=1e-9, atol=1e-12)
    # A feature on its centre: the clamped 1e-12 floor, 1e-12 * K per sample in all.
    on_centre = losses.centre_loss(jnp.asarray(centres[:2]), np.array([0, 1]), jnp.asarray(centres))
    assert float(on_centre) < 1e-5
    assert losses.initial_centres(jax.random.key(0), 6, 16).shape == (6, 16)
    with pytest.raises(losses.LossInputError, match="centres"):
        losses.centre_loss(jnp.zeros((2, 16)), np.array([0, 1]), jnp.zeros((6, 8)))


# ---------------------------------------------------------------------------------------------- sampler
def _sampler_labels():
    # 9 identities with 1..13 images (identity 0 has one image, identity 8 thirteen).
    counts = [1, 2, 4, 5, 6, 7, 8, 9, 13]
    return np.concatenate([np.full(n, 100 + i) for i, n in enumerate(counts)]), counts


def test_identity_groups_batches_invariants():
    labels, counts = _sampler_labels()
    p, k = 3, 4
    groups = {100 + i: max(n, k) // k for i, n in enumerate(counts)}
    lengths = set()
    for epoch in range(12):
        batches = pipeline.identity_groups_batches(labels, p, k, seed=3, epoch=epoch)
        lengths.add(len(batches))
        used = {identity: [] for identity in groups}
        for batch in batches:
            assert batch.shape == (p * k,)
            chunks = batch.reshape(p, k)
            identities = [labels[chunk[0]] for chunk in chunks]
            assert len(set(identities)) == p  # P distinct identities, K consecutive images each
            for identity, chunk in zip(identities, chunks):
                assert np.all(labels[chunk] == identity)
                used[identity].extend(chunk.tolist())
        remaining = {identity for identity, n in groups.items() if len(used[identity]) < n * k}
        assert len(remaining) < p  # stops once fewer than P identities have groups
        for identity, n in groups.items():
            assert len(used[identity]) <= n * k
            if counts[identity - 100] >= k:  # no image twice within an epoch
                assert len(set(used[identity])) == len(used[identity])
        assert used[100] in ([], [0, 0, 0, 0])  # one image resampled with replacement to K
    assert len(lengths) > 1  # the epoch length varies
    again = pipeline.identity_groups_batches(labels, p, k, seed=3, epoch=5)
    for a, b in zip(again, pipeline.identity_groups_batches(labels, p, k, seed=3, epoch=5)):
        np.testing.assert_array_equal(a, b)
    other = pipeline.identity_groups_batches(labels, p, k, seed=4, epoch=5)
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(again, other))
    with pytest.raises(pipeline.PipelineError, match="at least p=10"):
        pipeline.identity_groups_batches(labels, 10, k, seed=0, epoch=0)
