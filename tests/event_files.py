"""Writes one `Events` recording in any supported file format, for tests of the commands that read them."""

import numpy as np

import faery

import anon_jax.events as events

FORMATS = (".txt", ".h5", ".raw", ".dat", ".aedat4", ".npz", ".npy")


def write_events(path, recording: events.Events) -> None:
    """`recording` as `path`, in the format its suffix names (times in microseconds; text with a size header)."""
    suffix = path.suffix
    if suffix in (".txt", ".h5"):
        events.write(path, recording)
    elif suffix in (".raw", ".dat", ".aedat4"):
        array = np.zeros(len(recording), faery.EVENTS_DTYPE)
        array["t"], array["x"], array["y"], array["on"] = (recording.t, recording.x, recording.y,
                                                            recording.p.astype(bool))
        faery.events_stream_from_array(array, dimensions=recording.sensor_size).to_file(path, zero_t0=False)
    elif suffix == ".npz":
        np.savez(path, t=recording.t, x=recording.x, y=recording.y, p=recording.p,
                 sensor_size=np.array(recording.sensor_size))
    elif suffix == ".npy":
        array = np.zeros(len(recording), [("x", "<i2"), ("y", "<i2"), ("p", "?"), ("t", "<i8")])
        array["x"], array["y"], array["p"], array["t"] = recording.x, recording.y, recording.p, recording.t
        np.save(path, array)
    else:
        raise ValueError(f"no test writer for {suffix}")


def read_options(path) -> list[str]:
    """Command-line flags a command needs to read `path` like the others (NumPy states no time unit)."""
    return ["--time_unit", "us"] if path.suffix in (".npy", ".npz") else []
