"""Training-step speed: the event-anonymization joint step (anonymizer + ReId network + frozen E2VID, forward and
backward) and the raw-voxel ReId step, in samples per second, JAX (the project's jitted step functions) against the
same step in PyTorch eager and torch.compile with the same weights, losses and optimizer; plus each part of the
joint step timed alone, and the achieved FLOP/s of every compiled JAX step as a fraction of the measured peak.

    python -m benchmarks.training_step [--quick] [--repeats N] [--out DIR] [--no-torch-compile] [--size paper]
"""

from __future__ import annotations

import argparse
import functools
import time
import traceback

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import torch.nn.functional as F

from anon_jax import losses
from anon_jax.methods import event_anonymization, reid_baseline
from anon_jax.metrics import image as image_metrics
from anon_jax.models import anonymizer as anonymizer_lib
from anon_jax.models import e2vid
from anon_jax.models import reid as reid_models
from anon_jax.training import optim
from benchmarks import common, torch_models
from benchmarks.reconstruction import measure, random_variables
from configs import eventreid, eventreid_baseline

NAME = "training_step"
# Training identities: the embedded synthetic data's default 40 people minus every third (27); Event-ReId's 22.
FULL_STEP_BUDGET_S = 40.0  # seconds of alternating full-step rounds per case
NUM_CLASSES = {"default": 27, "paper": 22}


class BenchmarkSetupError(ValueError):
    """A configuration asks for something the PyTorch step does not reproduce."""


def quick_overrides(config: ml_collections.ConfigDict) -> None:
    """Shrinks a default config in place: 64x32 voxels, batch 4, a narrow ResNet-18, a narrow reconstructor."""
    config.data.height, config.data.width = 64, 32
    config.baseline.model.width = 8
    config.baseline.model.embed_dim = 16
    config.baseline.train.batch_size = 4
    config.joint.train.batch_size = 4
    config.reconstructor.pretrain.model.base_channels = 4


def benchmark_config(variant: str, quick: bool) -> ml_collections.ConfigDict:
    """configs/eventreid.py:<variant> with what the benchmark changes: no random flip (so the frameworks' first
    steps see the same batch and can be compared) and a constant learning rate (the schedule costs nothing)."""
    config = eventreid.get_config(None if variant == "default" else variant)
    if quick:
        quick_overrides(config)
    for train, optimizer in ((config.joint.train, config.joint.optimizer),
                             (config.baseline.train, config.baseline.optimizer)):
        train.random_flip = False
        optimizer.schedule, optimizer.warmup_steps = "constant", 0
    for loss in (config.joint.loss, config.baseline.loss):
        if loss.triplet_weight:
            raise BenchmarkSetupError("the PyTorch step has no triplet loss; the benchmarked configs do not use it "
                                      "(triplet_weight = 0).")
    if config.joint.attacker != "stateless" or config.joint.loss.reference != "reconstruction":
        raise BenchmarkSetupError("the PyTorch step reproduces the stateless attacker with the raw voxels' "
                                  "reconstruction as I_ref, as configs/eventreid.py sets them.")
    return config


def reconstructor_config(config, variant: str) -> ml_collections.FrozenConfigDict:
    """The frozen attacker's architecture: E2VID_lightweight (:paper imports the official one), else the model
    the default config pretrains."""
    if variant == "paper":
        return e2vid.LIGHTWEIGHT
    model = config.reconstructor.pretrain.model
    return ml_collections.FrozenConfigDict(e2vid.e2vid_config(**{f: model[f] for f in e2vid.LIGHTWEIGHT}))


def random_batch(config, batch_size: int, num_classes: int, seed: int) -> dict:
    """Sparse signed voxels (N, H, W, C) and labels, as the voxelised data looks."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, config.data.height, config.data.width, config.data.num_bins)
    voxels = rng.normal(size=shape) * (rng.uniform(size=shape) < 0.3)
    return {"voxels": voxels.astype(np.float32), "labels": rng.integers(0, num_classes, batch_size).astype(np.int32)}


def torch_optimizer(groups: dict, optimizer_config) -> torch.optim.SGD:
    """PyTorch SGD over named parameter groups with the config's multipliers (as optim.make_optimizer)."""
    if optimizer_config.name != "sgd":
        raise BenchmarkSetupError(f"optimizer {optimizer_config.name!r}: the PyTorch step reproduces SGD only.")
    return torch.optim.SGD([{"params": list(params), "lr": optimizer_config.learning_rate * multiplier}
                            for params, multiplier in groups.values()],
                           lr=optimizer_config.learning_rate, momentum=optimizer_config.momentum,
                           nesterov=optimizer_config.nesterov, weight_decay=optimizer_config.weight_decay)


def flat_params(tree) -> dict:
    return {"/".join(str(p.key) for p in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class JaxStepRunner:
    """Runs a jitted, state-donating train step on a fixed batch; `run()` blocks until the step is done."""

    def __init__(self, step, state, *args):
        self.step, self.state, self.args = step, state, args

    def run(self):
        self.state, metrics = self.step(self.state, *self.args)
        return jax.block_until_ready(metrics)


# ---------------------------------------------------------------------------------------------------- joint step
class TorchJointStep:
    """The joint objective in PyTorch: L_reid + w_struct (1 - SSIM(V, V_an)) - w_rec (1 - SSIM(I_ref, I_an)), I_ref
    the reconstruction of the raw voxels (no gradient), the reconstructor frozen but differentiated through."""

    def __init__(self, config, anonymizer, reid, reconstructor):
        self.config, self.anonymizer, self.reid, self.reconstructor = config, anonymizer, reid, reconstructor
        reconstructor.requires_grad_(False)
        joint = config.joint
        self.optimizer = torch_optimizer({
            "anonymizer": (anonymizer.parameters(), joint.anonymizer_lr_multiplier),
            "backbone": (reid.model.parameters(), joint.optimizer.backbone_lr_multiplier),
            "head": (reid.classifier.parameters(), joint.optimizer.head_lr_multiplier)}, joint.optimizer)

    def losses(self, voxels, labels):
        loss_cfg = self.config.joint.loss
        anonymized = self.anonymizer(voxels)
        outputs = self.reid(anonymized)
        cross_entropy = F.cross_entropy(outputs["logits"], labels, label_smoothing=loss_cfg.label_smoothing)
        struct_loss = 1 - torch_models.torch_ssim(voxels, anonymized).mean()
        attacked, _ = self.reconstructor(anonymized)
        with torch.no_grad():
            reference, _ = self.reconstructor(voxels)
        rec_loss = 1 - torch_models.torch_ssim(reference, attacked).mean()
        loss = cross_entropy + loss_cfg.struct_weight * struct_loss - loss_cfg.rec_weight * rec_loss
        return loss, {"loss": loss, "cross_entropy": cross_entropy, "struct_loss": struct_loss, "rec_loss": rec_loss}

    def step(self, voxels, labels, losses_fn=None) -> dict:
        """One optimizer step; `losses_fn` replaces self.losses (e.g. by its torch.compile)."""
        loss, terms = (losses_fn or self.losses)(voxels, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {name: value.detach().item() for name, value in terms.items()}

    def anonymizer_params(self) -> dict:
        """The anonymizer's tensors under the JAX parameter paths ("anonymizer/encoder_conv1/kernel", ...)."""
        return {f"anonymizer/{name}/{leaf}": tensor for i, name in torch_models.ANONYMIZER_CONVS.items()
                for leaf, tensor in (("kernel", self.anonymizer[i].weight), ("bias", self.anonymizer[i].bias))}


def joint_case(variant: str, *, quick: bool, repeats: int, use_compile: bool, peak: float,
               components: bool) -> list[dict]:
    config = benchmark_config(variant, quick)
    num_classes = NUM_CLASSES[variant]
    batch_size = config.joint.train.batch_size
    case = f"joint {variant}" + (" (quick)" if quick else "")
    anonymizer = anonymizer_lib.build_anonymizer(config.anonymizer)
    reid = reid_models.build_reid_network(config.baseline.model, num_classes=num_classes)
    rec_config = reconstructor_config(config, variant)
    rec_module = e2vid.E2VID(rec_config)
    rec_variables = random_variables(rec_module, seed=1)
    reconstructor = event_anonymization.Reconstructor(rec_module, unroll=config.reconstructor.scan_unroll)
    tx, _ = optim.make_optimizer(config.joint.optimizer, num_steps=1, steps_per_epoch=1,
                                 extra_groups={"anonymizer": config.joint.anonymizer_lr_multiplier})
    input_shape = (config.data.height, config.data.width, config.data.num_bins)
    state = event_anonymization.joint_state(config, anonymizer, reid, tx, input_shape, None)
    batch = random_batch(config, batch_size, num_classes, seed=2)

    # PyTorch copies of the initial weights, taken before the first (donating) JAX step.
    anonymizer_params, reid_params = event_anonymization.split_params(state["params"])
    torch_step = TorchJointStep(
        config, torch_models.anonymizer_from_flax(anonymizer_params),
        torch_models.reid_from_flax(reid, {"params": reid_params, "batch_stats": state["batch_stats"]}).train(),
        torch_models.e2vid_from_flax(rec_config, rec_variables))
    torch_voxels, torch_labels = torch_models.to_nchw(batch["voxels"]), torch.from_numpy(batch["labels"]).long()

    step = jax.jit(event_anonymization.make_joint_step(config, anonymizer, reid, reconstructor, tx,
                                                       use_frames=False), donate_argnums=0)
    jax_batch = jax.tree_util.tree_map(jnp.asarray, batch)
    compile_started = time.perf_counter()  # the executable compiled here is the one the step calls reuse
    flops = common.compiled_flops(step, state, jax_batch, rec_variables)
    compile_s = time.perf_counter() - compile_started
    runner = JaxStepRunner(step, state, jax_batch, rec_variables)
    # Parity: the first step's loss terms, then the anonymizer's parameters after it.
    jax_terms = runner.run().compute()
    torch_terms = torch_step.step(torch_voxels, torch_labels)
    loss_diff = max(abs(float(jax_terms[name]) - torch_terms[name]) for name in torch_terms)
    jax_anonymizer = flat_params({"anonymizer": runner.state["params"]["anonymizer"]})
    param_diff = max(float(np.max(np.abs(torch_models.flax_to_torch_array(jax_anonymizer[name])
                                         - tensor.detach().numpy())))
                     for name, tensor in torch_step.anonymizer_params().items())

    common_fields = {"case": case, "size": f"{config.data.height}x{config.data.width}", "batch": batch_size}
    runners = {"jax jit": runner.run, "torch eager": lambda: torch_step.step(torch_voxels, torch_labels)}
    if use_compile:
        torch._dynamo.reset()
        runners["torch.compile"] = functools.partial(torch_step.step, torch_voxels, torch_labels,
                                                     torch.compile(torch_step.losses))
    rows = time_runners(runners, common_fields, batch_size, flops, peak, repeats)
    print(f"{case}: full step timed", flush=True)
    rows[0].update(jax_compile_s=compile_s, first_step_loss_max_abs_diff=loss_diff,
                   anonymizer_param_max_abs_diff_after_step=param_diff)
    if components:
        rows += component_rows(common_fields, anonymizer, reid, rec_module, rec_variables, runner.state, batch,
                               torch_step, repeats, config)
    return rows


def time_runners(runners: dict, fields: dict, batch_size: int, flops: float, peak: float, repeats: int) -> list[dict]:
    """One row per runner: median step time, samples/s and FLOP/s (XLA's count of the JAX step for all).

    After each runner's first call (compilation) the runners take turns, one step each per round, so a load
    change on the machine hits all of them alike; the rounds fit FULL_STEP_BUDGET_S (at least 3, at most `repeats`).
    """
    rows, timed = [], {}
    for framework, run in runners.items():
        try:
            first = common.time_fn(run, warmup=0, repeats=1)["median_s"]
        except Exception as error:  # torch.compile needs a working toolchain; record why it failed
            if framework != "torch.compile":
                raise
            traceback.print_exc()
            rows.append({**fields, "part": "full step", "framework": framework,
                         "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
            continue
        timed[framework] = {"first": first, "times": common.time_fn(run, warmup=0, repeats=1)["times_s"]}
    round_s = sum(entry["times"][0] for entry in timed.values())
    rounds = int(min(repeats, max(3, FULL_STEP_BUDGET_S // max(round_s, 1e-9))))
    for _ in range(rounds - 1):
        for framework, entry in timed.items():
            entry["times"] += common.time_fn(runners[framework], warmup=0, repeats=1)["times_s"]
    for framework, entry in timed.items():
        times = entry["times"]
        timing = {"median_s": float(np.median(times)), "p10_s": float(np.percentile(times, 10)),
                  "p90_s": float(np.percentile(times, 90)), "repeats": len(times), "first_call_s": entry["first"]}
        rows.append({**fields, "part": "full step", "framework": framework, **timing_fields(timing, batch_size),
                     "gflop_per_s": flops / timing["median_s"] / 1e9,
                     "fraction_of_peak": flops / timing["median_s"] / peak})
    eager = next(r for r in rows if r["framework"] == "torch eager")["median_ms"]
    for row in rows:
        if "median_ms" in row:
            row["speedup_vs_torch_eager"] = eager / row["median_ms"]
    return rows


def timing_fields(timing: dict, batch_size: int) -> dict:
    median = timing["median_s"]
    return {"median_ms": 1e3 * median, "p10_ms": 1e3 * timing["p10_s"], "p90_ms": 1e3 * timing["p90_s"],
            "repeats": timing["repeats"], "first_call_s": timing["first_call_s"], "samples_per_s": batch_size / median}


def component_rows(fields, anonymizer, reid, rec_module, rec_variables, state, batch, torch_step, repeats,
                   config) -> list[dict]:
    """Each part of the joint step alone in both frameworks: where the time goes."""
    anonymizer_params, reid_params = event_anonymization.split_params(state["params"])
    voxels = jnp.asarray(batch["voxels"])
    labels = jnp.asarray(batch["labels"])
    anonymized = anonymizer.apply({"params": anonymizer_params}, voxels)
    smoothing = config.joint.loss.label_smoothing

    def anonymizer_loss(params, x):
        return jnp.mean(anonymizer.apply({"params": params}, x))

    def reid_loss(params, x):
        outputs, _ = reid.apply({"params": params, "batch_stats": state["batch_stats"]}, x, train=True,
                                mutable=["batch_stats"])
        return losses.cross_entropy(outputs["logits"], labels, label_smoothing=smoothing)

    def reconstructor_loss(x):
        return jnp.mean(rec_module.apply(rec_variables, x, None)[0])

    jax_parts = {
        "anonymizer fwd+bwd": (jax.jit(jax.grad(anonymizer_loss, argnums=(0, 1))), (anonymizer_params, voxels)),
        "ReId fwd+bwd": (jax.jit(jax.grad(reid_loss, argnums=(0, 1))), (reid_params, anonymized)),
        "reconstructor fwd+bwd (input grad)": (jax.jit(jax.grad(reconstructor_loss)), (anonymized,)),
        "reconstructor fwd": (jax.jit(lambda x: rec_module.apply(rec_variables, x, None)[0]), (voxels,)),
        "2 x SSIM fwd+bwd": (jax.jit(jax.grad(lambda a, b: jnp.mean(ssim_pair(a, b)), argnums=(0, 1))),
                             (voxels, anonymized)),
    }
    t_voxels = torch_models.to_nchw(batch["voxels"])
    t_labels = torch.from_numpy(batch["labels"]).long()
    with torch.no_grad():
        t_anonymized = torch_step.anonymizer(t_voxels)

    def torch_grad(fn, *inputs):
        def run():
            leaves = [x.detach().requires_grad_(True) for x in inputs]
            fn(*leaves).backward()
        return run

    def torch_reconstructor_fwd():
        with torch.no_grad():
            torch_step.reconstructor(t_voxels)

    torch_parts = {
        "anonymizer fwd+bwd": torch_grad(lambda x: torch_step.anonymizer(x).mean(), t_voxels),
        "ReId fwd+bwd": torch_grad(lambda x: F.cross_entropy(torch_step.reid(x)["logits"], t_labels,
                                                             label_smoothing=smoothing), t_anonymized),
        "reconstructor fwd+bwd (input grad)": torch_grad(lambda x: torch_step.reconstructor(x)[0].mean(),
                                                         t_anonymized),
        "reconstructor fwd": torch_reconstructor_fwd,
        "2 x SSIM fwd+bwd": torch_grad(lambda a, b: torch_ssim_pair(a, b), t_voxels, t_anonymized),
    }
    rows = []
    batch_size = len(batch["labels"])
    for part, (fn, args) in jax_parts.items():
        jax_timing = measure(lambda: jax.block_until_ready(fn(*args)), max_repeats=repeats)
        torch_timing = measure(torch_parts[part], max_repeats=repeats)
        flops = common.compiled_flops(fn, *args)
        for framework, timing in (("jax jit", jax_timing), ("torch eager", torch_timing)):
            rows.append({**fields, "part": part, "framework": framework, **timing_fields(timing, batch_size),
                         "gflop_per_s": flops / timing["median_s"] / 1e9})
        rows[-2]["speedup_vs_torch_eager"] = torch_timing["median_s"] / jax_timing["median_s"]
    return rows


def ssim_pair(voxels, anonymized):
    """The step's two SSIM terms: voxels vs anonymised voxels, and a one-channel pair standing in for the images."""
    return jnp.concatenate([image_metrics.ssim(voxels, anonymized), image_metrics.ssim(voxels[..., :1],
                                                                                       anonymized[..., :1])])


def torch_ssim_pair(voxels, anonymized):
    return torch.cat([torch_models.torch_ssim(voxels, anonymized),
                      torch_models.torch_ssim(voxels[:, :1], anonymized[:, :1])]).mean()


# ---------------------------------------------------------------------------------------------------- ReId step
class TorchReIdStep:
    """The raw-voxel ReId step in PyTorch: cross-entropy with label smoothing, SGD with the config's groups."""

    def __init__(self, spec, reid):
        self.spec, self.reid = spec, reid
        self.optimizer = torch_optimizer({
            "backbone": (reid.model.parameters(), spec.optimizer.backbone_lr_multiplier),
            "head": (reid.classifier.parameters(), spec.optimizer.head_lr_multiplier)}, spec.optimizer)

    def loss(self, voxels, labels):
        return F.cross_entropy(self.reid(voxels)["logits"], labels, label_smoothing=self.spec.loss.label_smoothing)

    def step(self, voxels, labels, loss_fn=None) -> float:
        """One optimizer step; `loss_fn` replaces self.loss (e.g. by its torch.compile)."""
        loss = (loss_fn or self.loss)(voxels, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach().item()


def reid_case(*, quick: bool, repeats: int, use_compile: bool, peak: float) -> list[dict]:
    """The raw-voxel ReId step of configs/eventreid_baseline.py (default) in both frameworks."""
    spec = eventreid_baseline.get_config()
    if quick:
        spec.data.height, spec.data.width = 64, 32
        spec.model.width, spec.model.embed_dim, spec.train.batch_size = 8, 16, 4
    spec.train.random_flip = False
    spec.optimizer.schedule, spec.optimizer.warmup_steps = "constant", 0
    if spec.loss.triplet_weight:
        raise BenchmarkSetupError("the PyTorch ReId step has no triplet loss (triplet_weight must be 0).")
    num_classes = NUM_CLASSES["default"]
    model = reid_models.build_reid_network(spec.model, num_classes=num_classes)
    tx, _ = optim.make_optimizer(spec.optimizer, num_steps=1, steps_per_epoch=1)
    input_shape = (spec.data.height, spec.data.width, spec.data.num_bins)
    state = reid_baseline.create_state(model, tx, input_shape, jax.random.key(0))
    batch = random_batch(spec, spec.train.batch_size, num_classes, seed=3)
    torch_step = TorchReIdStep(spec, torch_models.reid_from_flax(
        model, {"params": state["reid"]["params"], "batch_stats": state["reid"]["batch_stats"]}).train())
    t_voxels, t_labels = torch_models.to_nchw(batch["voxels"]), torch.from_numpy(batch["labels"]).long()

    step = jax.jit(reid_baseline.make_train_step(spec, model, tx), donate_argnums=0)
    jax_batch = jax.tree_util.tree_map(jnp.asarray, batch)
    compile_started = time.perf_counter()
    flops = common.compiled_flops(step, state, jax_batch)
    compile_s = time.perf_counter() - compile_started
    runner = JaxStepRunner(step, state, jax_batch)
    loss_diff = abs(float(runner.run().compute()["loss"]) - torch_step.step(t_voxels, t_labels))
    fields = {"case": "reid default" + (" (quick)" if quick else ""), "size": f"{spec.data.height}x{spec.data.width}",
              "batch": spec.train.batch_size}
    runners = {"jax jit": runner.run, "torch eager": lambda: torch_step.step(t_voxels, t_labels)}
    if use_compile:
        torch._dynamo.reset()
        runners["torch.compile"] = functools.partial(torch_step.step, t_voxels, t_labels,
                                                     torch.compile(torch_step.loss))
    rows = time_runners(runners, fields, spec.train.batch_size, flops, peak, repeats)
    rows[0].update(jax_compile_s=compile_s, first_step_loss_max_abs_diff=loss_diff)
    return rows


def main(argv=None) -> list[dict]:
    parser = common.add_common_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--size", choices=("default", "paper"), default="default",
                        help="default: the ReId step, the joint step and its parts at the CPU default sizes "
                             f"(writes {NAME}.json); paper: the joint step at the paper size, JAX and PyTorch eager "
                             f"(writes {NAME}_paper.json)")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="leave torch.compile out (it is always left out with --quick and --size paper: "
                             "compiling takes minutes)")
    args = parser.parse_args(argv)
    if args.quick and args.size == "paper":
        parser.error("--quick shrinks the default sizes; it does not combine with --size paper")
    use_compile = not (args.quick or args.no_torch_compile or args.size == "paper")
    started = time.perf_counter()
    peak = common.peak_matmul_flops()
    if args.size == "paper":
        rows = joint_case("paper", quick=False, repeats=args.repeats, use_compile=False, peak=peak, components=False)
    else:
        rows = reid_case(quick=args.quick, repeats=args.repeats, use_compile=use_compile, peak=peak)
        print(f"{time.perf_counter() - started:.0f} s: ReId step done", flush=True)
        # The parts compile five more programs: left out of --quick, which must take seconds.
        rows += joint_case("default", quick=args.quick, repeats=args.repeats, use_compile=use_compile, peak=peak,
                           components=not args.quick)
    meta = {"peak_matmul_gflop_per_s": peak / 1e9, "torch_threads": torch.get_num_threads(),
            "torch_compile": use_compile, "quick": args.quick, "seconds": time.perf_counter() - started,
            "notes": "samples_per_s = batch / median step time; random flip off and a constant learning rate in "
                     "both frameworks; the JAX stateless attacker skips the zero hidden state's half of the "
                     "ConvLSTM gate conv, PyTorch (as published) convolves the zeros; gflop_per_s uses XLA's FLOP "
                     "count of the JAX step (or part) for every framework; first_call_s includes compilation; "
                     "full steps: the frameworks take turns step by step (at least 3 rounds); parts: each "
                     "framework timed alone (at least 2 repeats)."}
    common.write_results(NAME if args.size == "default" else f"{NAME}_paper", rows, meta, args.out)
    return rows


if __name__ == "__main__":
    main()
