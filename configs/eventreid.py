"""Event anonymization ("ReId without Id", ICCV 2023), the main job: anonymizer + ReId trained jointly against a
frozen E2VID reconstructor, then attacked (inversion, adaptive reconstructor, identity leakage).

Variants: default = the embedded synthetic dataset at a CPU-friendly size (all stages in about half an hour on
2 CPU cores); `:smoke` = every stage on tiny data in a few minutes (tests); `:paper` = the published settings
(ResNet-50, 384x192, 5 bins, batch 8, SGD Nesterov 0.05 / 0.01 / 0.001 at epochs 40 / 50, 60 epochs, backbone and
anonymizer at 0.1x) for the real Event-ReId data on an accelerator, with an imported official E2VID checkpoint.
"""

import importlib.util
import os

import ml_collections

from anon_jax.models import anonymizer
from anon_jax.training import optim


def _sibling_config(name: str, variant: str) -> ml_collections.ConfigDict:
    """get_config(variant) of another config file in this folder (config files are not a package)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"anon_jax_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def _attack_section(num_steps: int, learning_rate: float) -> ml_collections.ConfigDict:
    section = ml_collections.ConfigDict()
    section.num_steps = num_steps  # optimizer steps
    section.batch_size = 32  # global batch of windows
    section.log_every_steps = 50  # console and TensorBoard logging interval
    section.checkpoint_every_steps = 200  # periodic checkpoint interval
    section.optimizer = optim.optimizer_config(name="adam", learning_rate=learning_rate, weight_decay=0.0,
                                               warmup_steps=20)
    return section


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", "smoke", "paper"):
        raise ValueError(f"Unknown variant {variant!r}; use '', ':smoke' or ':paper'.")
    config = ml_collections.ConfigDict()
    config.method = "event_anonymization"  # anon_jax.methods registry key
    config.seed = 0  # seeds parameters, sampling, augmentation and the query draw
    config.mesh_shape = (-1,)  # devices per mesh axis ("data", ["model"]); -1 = all devices
    config.compute_dtype = "auto"  # "float32", "bfloat16", or "auto" = bfloat16 on GPU/TPU, float32 on CPU
    config.stages = ("reconstructor", "data", "baseline", "joint", "attacks", "evaluate")  # "baseline", "attacks" optional

    # Data and the raw-event ReId baseline come from configs/eventreid_baseline.py (fields documented there).
    baseline_config = _sibling_config("eventreid_baseline", variant)
    config.data = data = baseline_config.data  # the baseline's data section

    config.reconstructor = rec = ml_collections.ConfigDict()
    rec.path = ""  # official E2VID .pth.tar to import, a save_pretrained folder, or "" to pretrain one here
    rec.scan_unroll = True  # unroll the stateful attacker's time loop (faster on CPU, slower to compile)
    # The pretraining run used when rec.path is "" (fields documented in configs/e2vid_pretrain.py).
    rec.pretrain = _sibling_config("e2vid_pretrain", "smoke" if variant == "smoke" else "default")
    rec.pretrain.compute_dtype = config.get_ref("compute_dtype")  # follows the main job's setting
    rec.pretrain.mesh_shape = config.get_ref("mesh_shape")  # follows the main job's setting
    rec.pretrain.data.pedestrian_seed = 1  # other people than the ReId identities: the attacker never saw them
    rec.pretrain.train.num_steps = 600 if variant == "default" else rec.pretrain.train.num_steps  # CPU budget

    config.anonymizer = anonymizer.anonymizer_config()  # fields documented in anon_jax/models/anonymizer.py

    config.baseline = base = ml_collections.ConfigDict()  # ReId on raw voxels; its architecture is the joint one's
    for section in ("model", "loss", "train", "optimizer"):
        base[section] = baseline_config[section]
    base.train.num_epochs = 6 if variant == "default" else base.train.num_epochs  # shorter: the joint stage follows

    config.joint = joint = ml_collections.ConfigDict()
    joint.attacker = "stateless"  # reconstructor in training: "stateless" single windows (published) or "stateful"
    joint.sequence_length = 4  # stateful: consecutive windows per sequence (batch_size must be a multiple)
    joint.init_from_baseline = True  # start the ReId network from the raw baseline (the paper: from ImageNet)
    joint.anonymizer_lr_multiplier = 1.0  # anonymizer learning-rate multiplier (the paper: 0.1, as the backbone)
    joint.loss = jloss = ml_collections.ConfigDict(base.loss.to_dict())  # the baseline's ReId loss terms, plus:
    jloss.struct_weight = 1.0  # w_struct of 1 - SSIM(V, V_an), keeps the voxel structure (paper: 1)
    jloss.rec_weight = 1.0  # w_rec of 1 - SSIM(I_ref, I_an), maximised against the attacker (paper: 1)
    # I_ref: "reconstruction" of the raw voxels (public code), "frames" (ground truth, paper) or "auto" (frames when
    # the data has them). Against the synthetic frames even raw events reach only SSIM 0.28 (the events never show
    # the background), so the frame term gives the anonymizer little to push against; see README.
    jloss.reference = "reconstruction"  # see above
    joint.train = ml_collections.ConfigDict(base.train.to_dict())  # the baseline's fields, plus:
    joint.train.num_epochs = 2 if variant == "default" else joint.train.num_epochs  # starts from the baseline
    joint.train.preview_every_steps = 100  # TensorBoard image grid (reference | raw | anonymised reconstruction)
    joint.optimizer = optim.optimizer_config(learning_rate=0.02, boundaries_epochs=(40, 50), decay_factors=(0.2, 0.1))

    config.attacks = attacks = ml_collections.ConfigDict()
    attacks.inversion = _attack_section(num_steps=200, learning_rate=1e-3)  # inverter: anonymised -> raw voxels
    attacks.inversion.base_features = 16  # inverter U-Net width
    attacks.inversion.num_levels = 2  # inverter U-Net depth (H, W multiples of 2**levels)
    attacks.adaptive = _attack_section(num_steps=200, learning_rate=2e-4)  # reconstructor fine-tuned on V_an
    attacks.adaptive.batch_size = 16  # smaller: a reconstructor step costs about 10 ReId steps on CPU
    attacks.leakage = leak = ml_collections.ConfigDict(base.to_dict())  # ReId on reference images, as the baseline:
    leak.model.width = base.model.width // 2  # but narrower
    leak.train.num_epochs = 4 if variant == "default" else leak.train.num_epochs  # and shorter

    config.eval = ev = ml_collections.ConfigDict()
    ev.batch_size = 64  # evaluation batch size
    ev.max_rank = 10  # CMC ranks reported
    ev.feature = "embed"  # descriptor of the CMC figure: "embed" (256-d) or "pool5"
    ev.figure_windows = 4  # test recordings shown in reconstructions.png

    if variant == "smoke":
        data.sequence_windows = 3  # a smoke recording holds 12 chunks
        config.anonymizer.base_features = 8
        joint.train.preview_every_steps = 2
        for attack in (attacks.inversion, attacks.adaptive):
            attack.num_steps = 4
            attack.batch_size = 8
            attack.log_every_steps = 2
            attack.checkpoint_every_steps = 4
            attack.optimizer.warmup_steps = 1
        attacks.inversion.base_features = 4
        ev.batch_size = 16
        ev.figure_windows = 2
    elif variant == "paper":
        rec.path = "E2VID_lightweight.pth.tar"  # the official checkpoint (download it yourself; no network here)
        joint.init_from_baseline = False
        joint.anonymizer_lr_multiplier = 0.1
        joint.optimizer = ml_collections.ConfigDict(base.optimizer.to_dict())  # the paper's schedule, as the baseline
    return config


def get_sweep(arg=None):
    """Privacy-utility sweep for `launch/sweep.py`: the weight w_rec of the reconstruction (privacy) term.

    0 trains the anonymizer for ReId and voxel structure only (no pressure against the attacker); larger weights
    trade ReId accuracy for worse reconstructions. The same weights serve every variant.
    """
    del arg  # every variant sweeps the same weights
    return [{"joint.loss.rec_weight": weight} for weight in (0.0, 0.5, 1.0, 2.0)]
