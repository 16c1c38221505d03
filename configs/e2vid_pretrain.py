"""Pretraining of the E2VID events-to-video reconstructor on simulated sequences (issue 3).

Variants: default = a narrower E2VID (base 16 channels, as the official training config: no norm layers) on
64x48 sequences, about a quarter of an hour on 2 CPU cores; `:smoke` = every stage on tiny data in a minute or
two (tests); `:lightweight` = the published E2VID_lightweight architecture with the recipe's settings (Adam
1e-4, L = 40, batch 2, random 112x112 crops) for an accelerator.
"""

import ml_collections

from anon_jax.data import reconstruction_sequences
from anon_jax.training import optim


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "smoke", "lightweight"):
        raise ValueError(f"Unknown variant {variant!r}; use '', ':smoke' or ':lightweight'.")
    config = ml_collections.ConfigDict()
    config.method = "reconstructor_pretrain"  # anon_jax.methods registry key
    config.seed = 0  # seeds parameters, batch draws and augmentation
    config.mesh_shape = (-1,)  # devices per mesh axis ("data", ["model"]); -1 = all devices
    config.compute_dtype = "auto"  # "float32", "bfloat16", or "auto" = bfloat16 on GPU/TPU, float32 on CPU

    config.data = reconstruction_sequences.default_sequence_config()  # sequence generator (fields documented there)

    config.model = model = ml_collections.ConfigDict()
    model.num_bins = config.data.get_ref("num_bins")  # voxel bins per window, shared with the data
    model.recurrent = True  # UNetRecurrent (True) or the feed-forward UNet
    model.recurrent_block = "convlstm"  # "convlstm" (E2VID) or "convgru"
    model.num_encoders = 3  # encoder levels; frames must be multiples of 2**num_encoders
    model.base_channels = 16  # channels after the head (32 in E2VID_lightweight)
    model.num_residual_blocks = 2  # residual blocks at the bottleneck
    model.skip = "sum"  # skip connections: "sum" or "concat"
    model.norm = "none"  # "BN", "IN" or "none" (the official training config uses none)
    model.decoder = "transposed"  # "transposed" conv (lightweight v1.1) or "upsample_conv"

    config.loss = loss = ml_collections.ConfigDict()
    loss.temporal_weight = 2.0  # weight of the temporal-consistency term (E2VID recipe: 2.0)
    loss.temporal_start_window = 2  # first window (L0) whose temporal term counts (recipe: 2)
    loss.visibility_alpha = 50.0  # alpha of the visibility weight exp(-alpha (gt - warp(gt_prev))^2)

    config.train = train = ml_collections.ConfigDict()
    train.batch_size = 2  # global batch of sequences (recipe: 2)
    train.sequence_length = 8  # windows per training sequence, back-propagated through (recipe: 40)
    train.num_steps = 1000  # optimizer steps
    train.crop_height = 0  # random crop height (0 = the whole frame)
    train.crop_width = 0  # random crop width (0 = the whole frame)
    train.random_flip = True  # horizontal flip with probability 1/2 (recipe)
    train.voxel_noise_std = 0.1  # Gaussian voxel noise, std drawn per sequence from U(0, this) (E2VID+ recipe)
    train.scan_unroll = True  # unroll the time loop (several times faster on CPU; False compiles faster)
    train.log_every_steps = 50  # console and TensorBoard logging interval
    train.validate_every_steps = 250  # validation-loss interval (a multiple of log_every_steps)
    train.checkpoint_every_steps = 250  # periodic checkpoint interval
    train.max_checkpoints_to_keep = 2  # older checkpoints are deleted

    # Fields documented in anon_jax/training/optim.py.
    config.optimizer = opt = optim.optimizer_config(
        name="adam",  # recipe: Adam
        learning_rate=5e-4,  # peak learning rate (recipe: 1e-4 over far more steps)
        weight_decay=0.0,  # recipe: 0
        warmup_steps=50,
    )

    config.evaluate = ev = ml_collections.ConfigDict()
    ev.batch_size = 16  # sequences per evaluation and validation batch
    ev.skip_windows = 0  # leading windows left out of the metrics (both methods start from nothing)
    ev.baseline_leak_rate_per_s = 1.0  # leak of the direct-integration baseline, per second
    ev.figure_sequences = 2  # test sequences shown in reconstructions.png
    ev.figure_windows = 6  # windows (columns) shown per sequence

    if variant == "smoke":
        # Data fields are documented in anon_jax/data/reconstruction_sequences.py.
        config.data.update(dict(height=32, width=24, render_fps=200.0, frames_per_window=6, num_windows=6,
                                texture_size=64, pedestrian_cameras=1))
        config.data.train.update(dict(natural=2, textures=2, pedestrian_identities=2))
        config.data.validation.update(dict(natural=1, textures=0, pedestrian_identities=1))
        config.data.test.update(dict(pedestrian_identities=2))
        model.base_channels = 4
        model.num_residual_blocks = 1
        train.batch_size = 4  # splits over 1, 2 or 4 devices (the multi-device test)
        train.sequence_length = 3
        train.num_steps = 6
        train.log_every_steps = 2
        train.validate_every_steps = 4
        train.checkpoint_every_steps = 4
        opt.warmup_steps = 2
        ev.batch_size = 4
        ev.figure_windows = 3
    elif variant == "lightweight":
        config.data.update(dict(height=128, width=128, num_windows=48, texture_size=320))
        config.data.train.update(dict(natural=100, textures=100, pedestrian_identities=20))
        config.data.validation.update(dict(natural=5, textures=5, pedestrian_identities=2))
        config.data.test.update(dict(pedestrian_identities=5))
        model.base_channels = 32
        model.norm = "BN"
        train.sequence_length = 40
        train.num_steps = 100_000
        train.crop_height = train.crop_width = 112
        train.scan_unroll = False
        train.log_every_steps = 100
        train.validate_every_steps = 2000
        train.checkpoint_every_steps = 2000
        opt.learning_rate = 1e-4
        opt.schedule = "constant"
        opt.warmup_steps = 0
        ev.batch_size = 8
    return config
