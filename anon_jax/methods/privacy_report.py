"""Evaluation and report of the event-anonymization method: ReId raw vs anonymised, and every attack's image quality
and identity leakage on the test identities, with CMC, reconstruction-grid and privacy-utility figures.

Attack windows are time-ordered test windows per recording (`datasets.attack_sequences`); "stateless" attacks
reconstruct each window from a zero state (as published), "stateful" ones carry the state along the windows.
Image metrics compare to the reference images I_ref of the objective (ground-truth frames, or stateless
reconstructions of the raw voxels) with data range 1, plus SSIM against the raw reconstruction and, when the data
has frames, against the ground truth. Identity leakage is the rank-1 / mAP of a ReId network trained on
ground-truth images (frames when available) of the training identities, queried with the attack's
reconstructions against a gallery of ground-truth images.
"""


import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from matplotlib import pyplot as plt

from anon_jax.data import datasets
from anon_jax.methods import reid_baseline
from anon_jax.metrics import image as image_metrics
from anon_jax.training import mesh as mesh_lib
from anon_jax.training import report as report_lib

REID_ROWS = ("embed / standard AP", "embed / trapezoid AP", "pool5 / standard AP")
CMC_FIGURE, GRID_FIGURE, TRADEOFF_FIGURE = "cmc.png", "reconstructions.png", "privacy_utility.png"
RAW, ANONYMISED = "raw events", "anonymised events"


def _reid_rows(prefix: str, evaluated: dict) -> dict:
    return {f"ReId {prefix} / {name}": evaluated[name] for name in REID_ROWS}


def image_quality(images: np.ndarray, references: np.ndarray, others: dict) -> dict:
    """Mean per-image SSIM, PSNR (dB) and MSE against the references (data range 1), and SSIM against each of
    `others` (name -> images)."""
    means = image_metrics.mean_quality(images, references)
    row = {name: means[name] for name in ("SSIM", "PSNR", "MSE")}
    # Identical images give an infinite PSNR; cap it so that the mean stays finite in the report.
    row["PSNR"] = min(row["PSNR"], 100.0)
    for name, values in others.items():
        row[f"SSIM vs {name}"] = image_metrics.mean_quality(images, values)["SSIM"]
    return row


def evaluate(config, splits, *, mesh, figure_dir, reference_kind, ground_truth, reconstructor, reconstructor_variables,
             anonymizer, anonymizer_params, reid, reid_variables, baseline, attacks) -> dict:
    """Stage "evaluate": JSON-able results {"reid", "privacy", "figures", ...}; writes the figures."""
    batch = config.eval.batch_size
    query, gallery = splits["query"], splits["gallery"]
    results, cmc = {"reid": {}, "privacy": {}}, {}

    def retrieval(prefix, apply_fn, variables):
        evaluated = reid_baseline.evaluate_features(jax.jit(reid_baseline.make_feature_fn(apply_fn)), variables, query,
                                                    gallery, batch_size=batch, max_rank=config.eval.max_rank, mesh=mesh)
        results["reid"].update(_reid_rows(prefix, evaluated))
        cmc[prefix] = evaluated[f"{config.eval.feature} / standard AP"]["cmc"]

    if baseline is not None:
        baseline_model, baseline_variables = baseline
        retrieval(RAW, baseline_model.apply, baseline_variables)
    retrieval(ANONYMISED, lambda v, x, train: reid.apply(v["reid"], anonymizer.apply(v["anonymizer"], x),
                                                         train=train),
              {"reid": reid_variables, "anonymizer": {"params": anonymizer_params}})

    sequences = datasets.attack_sequences(splits, config.data.sequence_windows)
    shape = sequences["voxels"].shape
    frames = sequences["frames"].reshape((-1,) + sequences["frames"].shape[2:]) if "frames" in sequences else None
    logging.info("Attack windows: %d recordings x %d windows (%s)", shape[0], shape[1],
                 "consecutive" if sequences["consecutive"] else "not consecutive: list-only data")

    def run(fn, params, voxels):
        """fn(params, (S, L, ...) voxels) batch-wise over recordings, returning (S * L, ...) host arrays."""
        out = mesh_lib.map_batches(fn, params, voxels, batch_size=max(1, batch // shape[1]), mesh=mesh)
        return out.reshape((-1,) + out.shape[2:])

    def per_window(apply_fn):
        """(params, (S, L, ...)) -> apply_fn(params, window) for every window."""
        return lambda params, voxels: jax.vmap(lambda v: apply_fn(params, v), in_axes=1, out_axes=1)(voxels)

    inputs = {RAW: sequences["voxels"]}
    inputs[ANONYMISED] = run(per_window(lambda p, v: anonymizer.apply({"params": p}, v)), anonymizer_params,
                             sequences["voxels"]).reshape(shape)
    attack_inputs = [("raw events -> reconstructor", RAW, reconstructor_variables),
                     ("anonymised -> reconstructor", ANONYMISED, reconstructor_variables)]
    if attacks is not None:
        inputs["inverted"] = run(per_window(attacks["invert"]), attacks["inverter_params"],
                                 inputs[ANONYMISED]).reshape(shape)
        attack_inputs += [("inversion attack -> reconstructor", "inverted", reconstructor_variables),
                          ("anonymised -> adaptive reconstructor", ANONYMISED, attacks["adaptive_variables"])]
    images = {}
    for name, source, variables in attack_inputs:
        for mode in ("stateless", "stateful"):
            def reconstruct(variables, v, mode=mode):
                windows = v if mode == "stateful" else v.reshape((-1,) + v.shape[2:])
                return reconstructor.apply(variables, windows, mode).reshape(v.shape[:2] + v.shape[2:4] + (1,))

            images[f"{name} ({mode})"] = run(reconstruct, variables, inputs[source])
    raw_reconstructions = images["raw events -> reconstructor (stateless)"]
    references = frames if reference_kind == "frames" else raw_reconstructions
    truths = raw_reconstructions if frames is None else frames
    others = {}
    if reference_kind == "frames":
        others["raw reconstruction"] = raw_reconstructions
    elif frames is not None:
        others["ground truth"] = frames
    for name, values in images.items():
        results["privacy"][name] = image_quality(values, references, others)

    if attacks is not None:
        leakage_fn = jax.jit(reid_baseline.make_feature_fn(attacks["leakage_model"].apply))
        labels = np.repeat(sequences["labels"], shape[1])
        cams = np.repeat(sequences["cams"], shape[1])
        leak_gallery = {"voxels": ground_truth(gallery), "labels": gallery["labels"], "cams": gallery["cams"]}
        for name, values in [("ground truth (leakage upper bound)", truths), *images.items()]:
            evaluated = reid_baseline.evaluate_features(
                leakage_fn, attacks["leakage_variables"], {"voxels": values, "labels": labels, "cams": cams},
                leak_gallery, batch_size=batch, max_rank=config.eval.max_rank, mesh=mesh)
            row = results["privacy"].setdefault(name, {})
            row["identity rank-1"] = evaluated["embed / standard AP"]["rank1"]
            row["identity mAP"] = evaluated["embed / standard AP"]["mAP"]

    figures = [GRID_FIGURE, TRADEOFF_FIGURE]
    plot_reconstruction_grid(f"{figure_dir}/{GRID_FIGURE}", inputs, images, truths, shape,
                             num_rows=config.eval.figure_windows)
    plot_privacy_utility(f"{figure_dir}/{TRADEOFF_FIGURE}", results)
    results.update(cmc=cmc, figures=figures, attack_recordings=int(shape[0]), attack_windows_per_recording=int(shape[1]),
                   attack_windows_consecutive=bool(sequences["consecutive"]))
    return results


def _show_voxel(voxel: np.ndarray) -> np.ndarray:
    """A voxel grid (H, W, C) as one signed image: the sum over time bins around its median, scaled to [-1, 1]
    (the median removes the dense offset of sigmoid outputs; raw voxels are mostly zero, so theirs is 0)."""
    summed = voxel.sum(-1)
    summed = summed - np.median(summed)
    return summed / max(float(np.abs(summed).max()), 1e-6)


def plot_reconstruction_grid(path, inputs, images, truths, shape, *, num_rows: int) -> None:
    """Rows of test windows; columns: each input voxel and its reconstructions, then the ground truth."""
    num_rows = min(num_rows, shape[0])
    recordings = np.linspace(0, shape[0] - 1, num_rows).astype(int)
    window = shape[1] - 1  # the last window: the stateful attacks have seen the whole run by then
    columns = [(f"{name} voxel", "voxel", values) for name, values in inputs.items()]
    columns += [(name.replace(" -> ", "\n-> "), "image", values.reshape(shape[:2] + values.shape[1:]))
                for name, values in images.items()]
    columns.append(("ground truth", "image", truths.reshape(shape[:2] + truths.shape[1:])))
    figure, axes = plt.subplots(num_rows, len(columns), figsize=(1.3 * len(columns), 2.2 * num_rows), dpi=90,
                                squeeze=False)
    for row, recording in enumerate(recordings):
        for col, (title, kind, values) in enumerate(columns):
            ax = axes[row, col]
            item = values[recording, window]
            if kind == "voxel":
                ax.imshow(_show_voxel(item), cmap="seismic", vmin=-1, vmax=1)
            else:
                ax.imshow(item[..., 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=6)
    report_lib.save_figure(figure, path)


def plot_privacy_utility(path, results) -> None:
    """ReId rank-1 (utility, x) against each attack's SSIM to the reference (privacy leak, y)."""
    reid_rank1 = {prefix: results["reid"][f"ReId {prefix} / embed / standard AP"]["rank1"]
                  for prefix in (RAW, ANONYMISED) if f"ReId {prefix} / embed / standard AP" in results["reid"]}
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, values in results["privacy"].items():
        if "SSIM" not in values:
            continue
        source = RAW if name.startswith("raw") else ANONYMISED
        if source not in reid_rank1:
            continue
        marker = "o" if "stateless" in name else "s"
        axes.scatter(reid_rank1[source], values["SSIM"], marker=marker)
        axes.annotate(name, (reid_rank1[source], values["SSIM"]), fontsize=6, xytext=(4, 2),
                      textcoords="offset points")
    axes.set(xlabel="ReId rank-1 (utility)", ylabel="SSIM of the attack to the reference (privacy leak)",
             title="Privacy-utility trade-off", xlim=(0, 1.05))
    axes.grid(alpha=0.3)
    report_lib.save_figure(figure, path)


def training_preview(train: dict, anonymizer, reconstructor, *, use_frames: bool, count: int = 4):
    """fn(anonymizer params, reconstructor variables) -> (count, H, 3W, 1) images for TensorBoard:
    reference | reconstruction of raw voxels | reconstruction of anonymised voxels, for fixed training windows."""
    voxels = jnp.asarray(train["voxels"][:count])
    frames = jnp.asarray(train["frames"][:count]) if use_frames else None

    @jax.jit
    def preview(anonymizer_params, reconstructor_variables):
        raw = reconstructor.windows(reconstructor_variables, voxels)
        attacked = reconstructor.windows(reconstructor_variables, anonymizer.apply({"params": anonymizer_params},
                                                                                   voxels))
        reference = frames if frames is not None else raw
        return jnp.concatenate([reference, raw, attacked], axis=2)

    return preview


def write(workdir: str, evaluated: dict, details: dict) -> dict:
    """report.json, report.md, metrics.json, cmc.png (+ the evaluate stage's figures); returns the report."""
    metrics = {name: {k: values[k] for k in ("rank1", "rank5", "rank10", "mAP")}
               for name, values in evaluated["reid"].items()}
    metrics.update(evaluated["privacy"])
    headline = {}
    raw_row, anon_row = (f"ReId {p} / embed / standard AP" for p in (RAW, ANONYMISED))
    if raw_row in metrics:
        headline["rank1_drop"] = metrics[raw_row]["rank1"] - metrics[anon_row]["rank1"]
    privacy = evaluated["privacy"]
    headline["ssim_drop_stateless"] = (privacy["raw events -> reconstructor (stateless)"]["SSIM"]
                                       - privacy["anonymised -> reconstructor (stateless)"]["SSIM"])
    headline["ssim_drop_stateful"] = (privacy["raw events -> reconstructor (stateful)"]["SSIM"]
                                      - privacy["anonymised -> reconstructor (stateful)"]["SSIM"])
    details = dict(details, **{f"headline_{k}": round(v, 4) for k, v in headline.items()},
                   attack_windows=f"{evaluated['attack_recordings']} test recordings x "
                                  f"{evaluated['attack_windows_per_recording']} windows"
                                  f"{'' if evaluated['attack_windows_consecutive'] else ' (not consecutive)'}")
    for name, values in metrics.items():
        logging.info("%-55s %s", name, "  ".join(f"{k} {v:.4f}" for k, v in values.items()))
    return report_lib.write_report(workdir, title="Event anonymization: ReId without identification",
                                   metrics=metrics, details=details,
                                   cmc_curves={f"{k} (embed)": v for k, v in evaluated["cmc"].items()},
                                   figures=tuple(evaluated["figures"]))
