"""Protects a folder of pedestrian images with PixelFade against a trained AGW authorization model.

python -m anon_jax.protect --reid-checkpoint DIR --images IN --out OUT [--max-iter 100] [--epsilon 0.03] ...
DIR is a main-job workdir (its authorization_model/ folder) or an anon_jax.models.agw.save_pretrained directory.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from anon_jax.data import image_augment
from anon_jax.data.image_reid import load_image
from anon_jax.files import atomic_target, atomic_write_text
from anon_jax.models import agw
from anon_jax.privacy import pixelfade
from anon_jax.progress import ProgressBar

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
REPORT_FILE = "protect.json"
REPORT_FORMAT = "anon_jax.protect/1"
# (config field, flag): the PixelFade settings the command line may override.
FLAG_FIELDS = (("batch_size", "--batch-size"), ("max_iter", "--max-iter"), ("epsilon", "--epsilon"),
               ("beta", "--beta"), ("beta_temp", "--beta-temp"), ("constraint", "--constraint"), ("seed", "--seed"))


class ProtectError(ValueError):
    """The images folder, the output folder or a setting of a protection run is unusable."""


def resolve_checkpoint(path: str | os.PathLike) -> pathlib.Path:
    """The save_pretrained directory: `path` itself or `path/authorization_model` of a main-job workdir."""
    path = pathlib.Path(path)
    for candidate in (path, path / agw.WORKDIR_EXPORT):
        if (candidate / agw.CONFIG_FILE).is_file():
            return candidate
    raise agw.AGWCheckpointError(
        f"{path}: neither {path / agw.CONFIG_FILE} nor {path / agw.WORKDIR_EXPORT / agw.CONFIG_FILE} exists; pass a "
        "workdir whose authorization model finished training or a directory written by "
        "anon_jax.models.agw.save_pretrained.")


def list_images(images_dir: str | os.PathLike) -> list[pathlib.Path]:
    """The folder's .jpg/.jpeg/.png/.bmp files (any case, not in subfolders), sorted by name."""
    images_dir = pathlib.Path(images_dir)
    if not images_dir.is_dir():
        raise ProtectError(f"{images_dir}: no such images folder.")
    paths = sorted((p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda p: p.name)
    if not paths:
        raise ProtectError(f"{images_dir}: the folder holds no {'/'.join(IMAGE_SUFFIXES)} images.")
    stems: dict[str, str] = {}
    for p in paths:
        if p.stem in stems:
            raise ProtectError(f"{images_dir}: {stems[p.stem]} and {p.name} would both be written as {p.stem}.npy "
                               "and .png; rename one of them.")
        stems[p.stem] = p.name
    return paths


def _check_output_dir(out_dir: pathlib.Path, images_dir: pathlib.Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ProtectError(f"{out_dir}: exists and is not a folder; choose another output folder.")
    if out_dir.exists() and out_dir.resolve() == images_dir.resolve():
        raise ProtectError(f"{out_dir}: is the images folder itself; the PNGs would replace the originals.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ProtectError(f"{out_dir}: the output folder is not empty; choose an empty or new one, or pass "
                           "--overwrite (overwrite=True) to replace files of the same names.")


def _write_npy(path: pathlib.Path, array: np.ndarray) -> None:
    with atomic_target(path) as temporary, open(temporary, "wb") as file:  # a file object: np.save adds no '.npy'
        np.save(file, array)


def _write_png(path: pathlib.Path, pixels: np.ndarray) -> None:
    with atomic_target(path) as temporary:
        Image.fromarray(pixels).save(temporary, format="PNG")


def viewable(protected: np.ndarray, mean, std) -> np.ndarray:
    """uint8 pixels of normalised images: denormalised, clipped to [0, 255], rounded (half to even)."""
    return np.round(np.clip(np.asarray(image_augment.denormalize(protected, mean, std)), 0, 255)).astype(np.uint8)


def protect_folder(checkpoint_dir: str | os.PathLike, images_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   config, *, overwrite: bool = False, progress: ProgressBar | None = None) -> dict:
    """Protects every image of `images_dir` with PixelFade (`config`: a pixelfade_config()) against the AGW model
    of `checkpoint_dir`; writes NAME.npy (float32 (H, W, 3) in the model's normalised space), NAME.png (viewable)
    and protect.json into `out_dir`, and returns the protect.json document.

    Images are protected in name order, config.batch_size at a time, the last batch padded (one compiled shape).
    The replacement chunks are drawn once for the batch shape from fold_in(key(seed), 0) and serve every batch; the
    noise target of image i is drawn from fold_in(key(seed), 1) and i.
    """
    pixelfade.check_config(config)
    images_dir, out_dir = pathlib.Path(images_dir), pathlib.Path(out_dir)
    paths = list_images(images_dir)
    _check_output_dir(out_dir, images_dir, overwrite)
    checkpoint = resolve_checkpoint(checkpoint_dir)
    network, variables, settings = agw.load_pretrained(checkpoint)
    (height, width), mean, std = settings["image_size"], settings["pixel_mean"], settings["pixel_std"]
    count, batch_size = len(paths), config.batch_size
    batch_shape = (batch_size, height, width, 3)

    apply_fn = functools.partial(network.apply, train=False)
    protect_fn = pixelfade.make_protect_fn(apply_fn, config)

    @jax.jit
    def returned_image_loss(variables, images, protected):
        return jnp.mean(jnp.square(apply_fn(variables, protected) - apply_fn(variables, images)), axis=-1)

    chunks_key, noise_key = pixelfade.protection_keys(config.seed)
    chunks = pixelfade.replacement_chunks(chunks_key, batch_shape, config.fade_num_iter)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = progress or ProgressBar(count, label="protect", unit="images")
    records = []
    for start in range(0, count, batch_size):
        batch_paths = paths[start:start + batch_size]
        real = len(batch_paths)
        pixels = np.stack([load_image(p, height=height, width=width) for p in batch_paths])
        images = image_augment.normalize(pixels, mean, std)
        result = pixelfade.protect_padded(protect_fn, variables, images, start=start, chunks=chunks,
                                          noise_key=noise_key)
        protected = np.asarray(result["images"], np.float32)
        final_loss = np.asarray(returned_image_loss(variables, images, protected))
        shown = viewable(protected, mean, std)
        for row, path in enumerate(batch_paths):
            _write_npy(out_dir / f"{path.stem}.npy", protected[row])
            _write_png(out_dir / f"{path.stem}.png", shown[row])
            records.append({"source": path.name, "npy": f"{path.stem}.npy", "png": f"{path.stem}.png",
                            "loss_last_iteration": float(result["loss"][row]),
                            "loss_returned_image": float(final_loss[row]),
                            "replacements": int(result["replacements"][row])})
        progress.update(start + real)
    report = {"format": REPORT_FORMAT, "checkpoint": str(checkpoint.absolute()),
              "images_dir": str(images_dir.absolute()), "pixelfade": config.to_dict(),
              "image_size": [height, width], "pixel_mean": list(mean), "pixel_std": list(std), "count": count,
              "images": records}
    atomic_write_text(out_dir / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def config_from_args(args: argparse.Namespace):
    """pixelfade_config() with the flags that were given; ProtectError names the first bad flag."""
    config = pixelfade.pixelfade_config()
    for field, flag in FLAG_FIELDS:
        value = getattr(args, field)
        if value is None:
            continue
        config[field] = value
        try:  # the defaults are valid, so checking after each override blames the flag just set
            pixelfade.check_config(config)
        except pixelfade.PixelFadeError as error:
            raise ProtectError(f"{flag} {value}: {error}") from error
    return config


def parse_args(argv=None) -> argparse.Namespace:
    defaults = pixelfade.pixelfade_config()
    parser = argparse.ArgumentParser(prog="python -m anon_jax.protect", description=__doc__.splitlines()[0])
    parser.add_argument("--reid-checkpoint", required=True, metavar="DIR", help="main-job workdir (uses its authorization_model/ "
                        "folder) or a directory written by anon_jax.models.agw.save_pretrained")
    parser.add_argument("--images", required=True, metavar="IN", help="folder of .jpg/.jpeg/.png/.bmp images (not recursive)")
    parser.add_argument("--out", required=True, metavar="OUT", help="output folder: NAME.npy (normalised float32), NAME.png and "
                        "protect.json; it must be empty or new unless --overwrite")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing files of "
                        "the same names")
    parser.add_argument("--batch-size", dest="batch_size", type=int, metavar="N",
                        help=f"images protected together (default {defaults.batch_size})")
    parser.add_argument("--max-iter", dest="max_iter", type=int, metavar="N",
                        help=f"iterations per batch (default {defaults.max_iter})")
    parser.add_argument("--epsilon", type=float, metavar="E",
                        help=f"feature constraint: mean squared feature difference below this (default "
                        f"{defaults.epsilon})")
    parser.add_argument("--beta", type=float, metavar="B", help=f"step size when the constraint is met (default {defaults.beta})")
    parser.add_argument("--beta-temp", dest="beta_temp", type=float, metavar="B",
                        help=f"step size when the constraint is violated (default {defaults.beta_temp})")
    parser.add_argument("--constraint", metavar="{batch,image}", help=f"{' or '.join(pixelfade.CONSTRAINTS)}: one decision for the batch "
                        f"(the original) or one per image (default {defaults.constraint})")
    parser.add_argument("--seed", type=int, metavar="S", help=f"replacement chunks and noise images (default {defaults.seed})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
        report = protect_folder(args.reid_checkpoint, args.images, args.out, config, overwrite=args.overwrite)
    except (ValueError, OSError) as error:  # bad flags, folders, checkpoints, images: one line, no traceback
        print(f"protect: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    print(f"protect: wrote {report['count']} protected images to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
