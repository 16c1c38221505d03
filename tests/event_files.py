"""Writes one `Events` recording in any supported file format, for tests of the commands that read them."""

import numpy as np

import faery

import anon_jax.events as events
from tests import test_rosbag_events

FORMATS = (".txt", ".h5", ".raw", ".dat", ".aedat4", ".npz", ".npy", ".bag")


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
    elif suffix == ".bag":
        messages = [test_rosbag_events.make_message(
            test_rosbag_events.STORE, "dvs_msgs", part.t // 10**6, part.t % 10**6 * 1000, part.x, part.y, part.p,
            recording.sensor_size, stamp=i) for i, part in enumerate(_parts(recording, 3))]
        test_rosbag_events.write_bag(path, {"/dvs/events": ("dvs_msgs/msg/EventArray", messages)})
    else:
        raise ValueError(f"no test writer for {suffix}")


def _parts(recording: events.Events, count: int) -> list[events.Events]:
    """`recording` cut into `count` consecutive parts (one ROS message each)."""
    bounds = np.linspace(0, len(recording), count + 1).astype(int)
    return [recording.slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]


def read_options(path) -> list[str]:
    """Command-line flags a command needs to read `path` like the others (NumPy states no time unit)."""
    return ["--time_unit", "us"] if path.suffix in (".npy", ".npz") else []
