"""AnonyNoise (WACV 2025) on the embedded synthetic data: people performing actions under several lighting
conditions, seen by several cameras; the target task is the action, the attacker re-identifies the person.

Variants: default = all stages on 2 CPU cores (narrower networks than the paper, fewer epochs); `:smoke` = every
stage on tiny data in a few minutes (tests); `:paper` = the published networks and schedules (ResNet-50 target and
ReId networks, the 64-128-256 anonymizer, the 15-layer denoiser, 300 pipeline epochs) for an accelerator.
Real datasets: configs/anonynoise_dvsgesture.py, configs/anonynoise_see.py, configs/anonynoise_eventreidv2.py.
"""

import ml_collections

from anon_jax.data import anonynoise_data
from anon_jax.training import optim


def adam(learning_rate: float, schedule: str = "cosine_epochs", **overrides) -> ml_collections.ConfigDict:
    """The original's Adam (default betas, no weight decay, no warm-up) with a per-epoch schedule."""
    return optim.optimizer_config(name="adam", learning_rate=learning_rate, weight_decay=0.0, schedule=schedule,
                                  warmup_steps=0, **overrides)


def helper_adam() -> ml_collections.ConfigDict:
    """The pipeline's target and ReId networks ("helpers"): Adam 1e-3 halved every 100 epochs (StepLR(100, 0.5))."""
    return adam(1e-3, "piecewise_epochs", boundaries_epochs=(100, 200), decay_factors=(0.5, 0.5))


def base_config() -> ml_collections.ConfigDict:
    """Fields every AnonyNoise config shares (set to the published values where they exist)."""
    config = ml_collections.ConfigDict()
    config.method = "anonynoise"  # anon_jax.methods registry key
    config.seed = 42  # the original's seed: parameters, noise, augmentation, sampling
    config.mesh_shape = (-1,)  # devices per mesh axis ("data", ["model"]); -1 = all devices
    config.compute_dtype = "auto"  # "float32", "bfloat16", or "auto" = bfloat16 on GPU/TPU, float32 on CPU

    # Fields documented in anon_jax/data/anonynoise_data.py (data_config).
    config.data = anonynoise_data.data_config()

    config.anonymizer = anon = ml_collections.ConfigDict()
    anon.variant = "scaled_noise"  # "scaled_noise" (released code: x + S n) or "mean_and_scaled_noise" (figure)
    anon.noise_std = 1.0  # std of the N(0, 1) noise fed to the network and multiplied by its output
    anon.features = (64, 128, 256, 128, 64)  # the five hidden widths of the six 3x3 convs
    # Set to another AnonyNoise run's <workdir>/anonymizer folder to attack that anonymizer instead of training one
    # (the target network and the pipeline are then skipped): EventReIDv2, which has no target task.
    anon.pretrained_dir = ""  # "" trains the anonymizer here

    config.model = model = ml_collections.ConfigDict()  # target and ReId networks (ClassNet)
    model.depth = 50  # ResNet depth: 18, 34 or 50 (paper: 50, ImageNet-initialised)
    model.width = 64  # channels of the first ResNet stage
    model.embed_dim = 512  # bottleneck after the trunk (the ReId "embed" feature)
    model.dropout = 0.5  # dropout after the bottleneck
    # The paper's trunk init: a local torchvision ResNet checkpoint (ImageNet V1, e.g. resnet50-0676ba61.pth), conv1
    # widened by cyclic channel copy; nothing is downloaded, and reading the file needs PyTorch.
    model.imagenet_weights = ""  # "" trains from scratch

    config.denoiser = den = ml_collections.ConfigDict()  # the inversion attack's DnCNN-like network
    den.features = 128  # channels of the hidden 3x3 convs
    den.num_layers = 15  # conv layers (first, 13 conv-BN-ReLU, last)

    config.loss = loss = ml_collections.ConfigDict()
    loss.triplet_margin = 4.0  # batch-hard triplet margin (the original's MarginRankingLoss margin)

    config.pretrain = pre = ml_collections.ConfigDict()  # target and ReId networks on clean frames
    pre.batch_size = 32  # global batch size (split over the devices)
    pre.num_epochs = 200  # passes over the training samples
    pre.optimizer = adam(1e-4)  # cosine to 0 over the epochs
    pre.log_every_steps = 50  # console and TensorBoard logging interval
    pre.checkpoint_every_steps = 500  # periodic checkpoint interval

    config.pipeline = pipe = ml_collections.ConfigDict()  # the adversarial training
    pipe.batch_size = 32  # global batch size
    pipe.num_epochs = 300  # passes over the training samples
    pipe.anonymizer_optimizer = adam(5e-4)  # cosine to 0 over the epochs
    pipe.target_optimizer = helper_adam()  # the target network's: 1e-3, halved every 100 epochs
    pipe.reid_optimizer = helper_adam()  # the ReId network's: the same
    pipe.log_every_steps = 50  # logging interval
    pipe.checkpoint_every_steps = 500  # periodic checkpoint interval

    config.post = post = ml_collections.ConfigDict()  # attackers re-trained on anonymised frames
    post.batch_size = 32  # global batch size
    post.num_epochs = 200  # passes over the training samples
    post.optimizer = adam(1e-4)  # cosine to 0 over the epochs
    # "pipeline" (the original: continue the pipeline's ReId network), "pretrained" (the ReId network trained on
    # clean frames) or "fresh" (random init).
    post.init = "pipeline"  # the attackers' starting point
    post.log_every_steps = 50  # logging interval
    post.checkpoint_every_steps = 500  # periodic checkpoint interval

    config.eval = ev = ml_collections.ConfigDict()
    ev.batch_size = 64  # evaluation batch size
    ev.max_rank = 10  # CMC ranks reported
    return config


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "smoke", "paper"):
        raise ValueError(f"Unknown variant {variant!r}; use '', ':smoke' or ':paper'.")
    config = base_config()
    if variant == "paper":
        return config
    # CPU default: narrower networks, fewer epochs, a larger learning rate for the networks trained from scratch
    # (no ImageNet weights here), so that every stage fits 2 cores.
    config.anonymizer.features = (16, 32, 64, 32, 16)  # a quarter of the published widths
    config.model.depth = 18  # ResNet-18 target and ReId networks
    config.model.width = 32  # first-stage channels
    config.model.embed_dim = 128  # ReId feature size
    config.denoiser.features = 32  # a quarter of the published width
    config.denoiser.num_layers = 6  # a shallower denoiser
    config.pretrain.num_epochs = 80  # passes over the training samples
    config.pretrain.optimizer = adam(1e-3)  # from scratch: 10x the published fine-tuning rate
    config.pipeline.num_epochs = 30  # passes over the training samples
    config.pipeline.anonymizer_optimizer = adam(2e-3)  # 4x the published rate: 480 steps instead of ~10,000
    config.pipeline.target_optimizer.boundaries_epochs = (10, 20)  # halved at 1/3 and 2/3, as 100 and 200 of 300
    config.pipeline.reid_optimizer.boundaries_epochs = (10, 20)  # as the target network's
    config.post.num_epochs = 30  # passes over the training samples
    config.post.optimizer = adam(1e-3)  # as pretraining
    if variant == "smoke":
        anonynoise_data.smoke_overrides(config.data)
        config.anonymizer.features = (4, 8, 8, 8, 4)  # tiny networks: seconds per stage
        config.model.width = 8  # tiny ResNet-18
        config.model.embed_dim = 16  # tiny feature
        config.denoiser.features = 8  # tiny denoiser
        config.denoiser.num_layers = 3  # three convs
        for section in (config.pretrain, config.pipeline, config.post):
            section.batch_size = 8
            section.num_epochs = 1
            section.log_every_steps = 2
            section.checkpoint_every_steps = 4
        for name in ("target_optimizer", "reid_optimizer"):
            config.pipeline[name].boundaries_epochs = (1,)
            config.pipeline[name].decay_factors = (0.5,)
        config.eval.batch_size = 16  # evaluation batch size
    return config
