"""Writers of small AnonyNoise dataset trees in each real format (tonic DVS-Gesture .npy, SEE image sequences,
EventReIDv2 chunk text files, query lists), shared by the reader and TFDS builder tests."""

import pathlib

import numpy as np
from PIL import Image

TONIC_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])


def random_events(rng, count, *, size=128, t0=0, span=6000):
    """(x, y, t, p) of `count` time-sorted events on a size x size sensor."""
    x = rng.integers(0, size, count)
    y = rng.integers(0, size, count)
    p = rng.integers(0, 2, count)
    t = np.sort(rng.integers(t0, t0 + span, count))
    return x, y, t, p


def write_dvsg(path: pathlib.Path, x, y, t, p, *, structured=True):
    """A tonic DVS-Gesture file: structured (x, y, p, t) as tonic saves it, or an (N, 4) float array."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if structured:
        events = np.zeros(len(x), TONIC_DTYPE)
        events["x"], events["y"], events["p"], events["t"] = x, y, p, t
    else:
        events = np.stack([x, y, p, t], axis=1).astype(np.float64)
    np.save(path, events)


def write_query_list(path: pathlib.Path, relpaths):
    """dvsg_query_subset_ids.txt lines `userNN <pick> /ibmGestureTest/...` for the given test files."""
    lines = [f"{relpath.split('/')[1].split('_')[0]} {pick} /{relpath}" for pick, relpath in enumerate(relpaths)]
    path.write_text("\n".join(lines))


def write_sequence(folder: pathlib.Path, images, *, suffix=".png", names=None):
    """A SEE sequence folder of grayscale images named 00000<suffix>, 00001<suffix>, ... unless `names`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"{index:05d}{suffix}" for index in range(len(images))]
    for name, image in zip(names, images):
        Image.fromarray(image).save(folder / name)


def sequence_name(seq, user, emotion, take=1):
    """A SEE sequence name `[seq]_[ID]_[sex]_[age]_[degree]_[lighting]_[emotion]_[length]_[take]`."""
    return f"{seq}_{user}_man_20_Master_normal_{emotion}_50_take{take:03d}"


def write_chunk(path: pathlib.Path, t, x, y, p):
    """An EventReIDv2 chunk file with rows `t x y p`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ti!r} {xi} {yi} {pi}\n" for ti, xi, yi, pi in zip(t.tolist(), x, y, p)))


def reid_events(rng, count, *, x0=300, y0=200, width=11, height=16):
    """Events whose bounding box is exactly width x height, with Event-ReId's ~4.1e8 fractional timestamps."""
    x = rng.integers(x0, x0 + width, count)
    y = rng.integers(y0, y0 + height, count)
    x[:2], y[:2] = [x0, x0 + width - 1], [y0, y0 + height - 1]
    t = np.sort(410629076.0 + rng.random(count) * 33.3)
    return t, x, y, rng.integers(0, 2, count)
