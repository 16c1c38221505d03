"""ROS bag event reader: bags written with rosbags' own writers (ROS 1 and ROS 2), read back exactly; errors."""

from __future__ import annotations

import sys
from fractions import Fraction

import numpy as np
import pytest
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import Writer as Writer2
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from anon_jax.events.container import MissingDependencyError
from tests.event_checks import read_all
from anon_jax.events.rosbag_io import decode_ros1_event_array, open_rosbag
from anon_jax.events.stream import EventFormatError

SEC0 = 1_600_000_000  # Unix-epoch seconds
# dvs_msgs as rpg_dvs_ros defines them; a fork with another field layout (prophesee's ROS 2 driver's).
DVS = {"Event": "uint16 x\nuint16 y\ntime ts\nbool polarity\n",
       "EventArray": "std_msgs/Header header\nuint32 height\nuint32 width\nEvent[] events\n"}
FORK = {"Event": "int32 x\nint32 y\nbool polarity\ntime ts\n",
        "EventArray": "std_msgs/Header header\nint32 width\nint32 height\nEvent[] events\n"}


def typestore(store=Stores.ROS1_NOETIC, layouts=(("dvs_msgs", DVS), ("prophesee_event_msgs", DVS))):
    store = get_typestore(store)
    types = {}
    for package, layout in layouts:
        for name, text in layout.items():
            types.update(get_types_from_msg(text, f"{package}/msg/{name}"))
    store.register(types)
    return store


STORE = typestore()


def expected_us(sec, nsec):
    """sec/nsec to microseconds, nearest with ties to even, computed with exact fractions."""
    return np.array([round(Fraction(int(s) * 10**9 + int(n), 1000)) for s, n in zip(sec, nsec)], dtype=np.int64)


def make_message(store, package, sec, nsec, x, y, p, size, stamp=0):
    types = store.types
    time = types["builtin_interfaces/msg/Time"]
    event = types[f"{package}/msg/Event"]
    events = [event(x=int(a), y=int(b), ts=time(sec=int(s), nanosec=int(n)), polarity=bool(c))
              for a, b, s, n, c in zip(x, y, sec, nsec, p)]
    header_fields = {"stamp": time(sec=SEC0 + stamp, nanosec=0), "frame_id": "camera"}
    if "seq" in [name for name, _ in store.fielddefs["std_msgs/msg/Header"][1]]:
        header_fields["seq"] = stamp
    header = types["std_msgs/msg/Header"](**header_fields)
    return types[f"{package}/msg/EventArray"](header=header, width=size[0], height=size[1], events=events)


def random_events(rng, n, size, start_ns):
    """Sorted event times from start_ns (as sec, nsec), coordinates inside `size`, 0/1 polarity."""
    ns = start_ns + np.cumsum(rng.integers(0, 900, n))
    return {"sec": ns // 10**9, "nsec": ns % 10**9, "x": rng.integers(0, size[0], n),
            "y": rng.integers(0, size[1], n), "p": rng.integers(0, 2, n)}


def write_bag(path, topics, store=STORE):
    """A ROS 1 bag: topics = {name: (msgtype, [message objects or raw bytes])}, one message per second."""
    with Writer1(path) as writer:
        for name, (msgtype, messages) in topics.items():
            connection = writer.add_connection(name, msgtype, typestore=store)
            for i, message in enumerate(messages):
                data = message if isinstance(message, bytes) else store.serialize_ros1(message, msgtype)
                writer.write(connection, (SEC0 + i) * 10**9, data)
    return path


def dvs_messages(messages, size=(346, 260), package="dvs_msgs", store=STORE, sizes=None):
    return [make_message(store, package, m["sec"], m["nsec"], m["x"], m["y"], m["p"],
                         size if sizes is None else sizes[i], stamp=i) for i, m in enumerate(messages)]


def concat(messages):
    return {key: np.concatenate([np.asarray(m[key], dtype=np.int64) for m in messages]) for key in messages[0]}



def assert_same(columns, expected):
    np.testing.assert_array_equal(columns["t"], expected_us(expected["sec"], expected["nsec"]))
    for name, key in (("x", "x"), ("y", "y"), ("p", "p")):
        np.testing.assert_array_equal(columns[name], expected[key])


# Sub-microsecond nanoseconds: below, at and above the half, ties to even both ways, a carry into the next second.
EDGE_NSEC = [0, 499, 500, 501, 1_500, 2_500, 2_501, 999_999_499, 999_999_500, 999_999_999]


def edge_message():
    n = len(EDGE_NSEC)
    return {"sec": np.full(n, SEC0 + 3), "nsec": np.array(EDGE_NSEC), "x": np.arange(n), "y": np.arange(n) * 2,
            "p": np.arange(n) % 2}


def test_known_md5_of_the_dvs_layout():
    # The md5 rpg_dvs_ros bags carry for dvs_msgs/EventArray; prophesee's ROS 1 copy hashes the same.
    assert STORE.generate_msgdef("dvs_msgs/msg/EventArray")[1] == "5e8beee5a6c107e504c2e78903c224b8"
    assert STORE.generate_msgdef("prophesee_event_msgs/msg/EventArray")[1] == "5e8beee5a6c107e504c2e78903c224b8"


def test_ros1_bag_reads_back_exactly_with_rounding(tmp_path):
    rng = np.random.default_rng(0)
    messages = [random_events(rng, 2_000, (346, 260), (SEC0 + 1) * 10**9 + 250),
                random_events(rng, 1_500, (346, 260), (SEC0 + 2) * 10**9 + 7),
                edge_message(),
                random_events(rng, 0, (346, 260), 0),  # an empty message
                random_events(rng, 800, (346, 260), (SEC0 + 4) * 10**9 + 999_999_000)]
    path = write_bag(tmp_path / "dvs.bag", {"/dvs/events": ("dvs_msgs/msg/EventArray", dvs_messages(messages))})
    opened = open_rosbag(path)
    assert (opened.format, opened.sensor_size, opened.time_unit) == ("rosbag", (346, 260), "us")
    assert opened.details == {"topic": "/dvs/events", "message_type": "dvs_msgs/msg/EventArray", "messages": 5,
                              "topics": {"/dvs/events": "dvs_msgs/msg/EventArray"}, "ros2": False}
    columns = read_all(opened)
    assert_same(columns, concat(messages))
    # Hand-checked: 500 ns -> 0 us (tie, even), 1500 -> 2, 2500 -> 2, 2501 -> 3, 999_999_500 -> next second.
    edge = columns["t"][3_500:3_510] - (SEC0 + 3) * 10**6
    assert edge.tolist() == [0, 0, 0, 1, 2, 2, 3, 999_999, 1_000_000, 1_000_000]
    assert open_rosbag(str(path), sensor_size=(346, 260), time_unit="us").sensor_size == (346, 260)


def test_chunks_equal_the_whole_topic_for_any_max_events(tmp_path):
    rng = np.random.default_rng(1)
    messages = [random_events(rng, n, (64, 48), (SEC0 + i) * 10**9) for i, n in enumerate((5, 0, 120, 1, 333))]
    path = write_bag(tmp_path / "c.bag", {"/events": ("dvs_msgs/msg/EventArray", dvs_messages(messages, (64, 48)))})
    opened = open_rosbag(path)
    for max_events in (1, 4, 100, 459, 10_000):
        chunks = list(opened.chunks(max_events))
        sizes = [len(chunk["t"]) for chunk in chunks]
        assert sizes[:-1] == [max_events] * (len(sizes) - 1) and 0 < sizes[-1] <= max_events and sum(sizes) == 459
        assert_same({name: np.concatenate([c[name] for c in chunks]) for name in "txyp"}, concat(messages))
    with pytest.raises(EventFormatError, match="max_events must be a positive integer"):
        opened.chunks(0)


def test_decoder_matches_rosbags_deserialiser():
    rng = np.random.default_rng(2)
    m = random_events(rng, 50, (640, 480), SEC0 * 10**9)
    message = make_message(STORE, "dvs_msgs", m["sec"], m["nsec"], m["x"], m["y"], m["p"], (640, 480))
    raw = STORE.serialize_ros1(message, "dvs_msgs/msg/EventArray")
    size, columns = decode_ros1_event_array(raw, "test")
    back = STORE.deserialize_ros1(raw, "dvs_msgs/msg/EventArray")
    assert size == (back.width, back.height) == (640, 480)
    assert columns["x"].tolist() == [e.x for e in back.events]
    assert columns["p"].tolist() == [int(e.polarity) for e in back.events]
    assert columns["t"].tolist() == expected_us([e.ts.sec for e in back.events],
                                                [e.ts.nanosec for e in back.events]).tolist()
    with pytest.raises(EventFormatError, match=r"test: the message declares 50 events \(650 bytes\) but holds 649"):
        decode_ros1_event_array(raw[:-1], "test")
    with pytest.raises(EventFormatError, match="inside its header"):
        decode_ros1_event_array(raw[:10], "test")


def topics_bag(tmp_path):
    rng = np.random.default_rng(3)
    cam0 = [random_events(rng, 30, (346, 260), SEC0 * 10**9)]
    cam1 = [random_events(rng, 20, (1280, 720), SEC0 * 10**9)]
    note = STORE.types["std_msgs/msg/String"](data="hello")
    path = write_bag(tmp_path / "t.bag", {
        "/cam0/events": ("dvs_msgs/msg/EventArray", dvs_messages(cam0)),
        "/cam1/events": ("prophesee_event_msgs/msg/EventArray",
                         dvs_messages(cam1, (1280, 720), package="prophesee_event_msgs")),
        "/notes": ("std_msgs/msg/String", [note])})
    return path, cam0, cam1


def test_topic_selection(tmp_path):
    path, cam0, cam1 = topics_bag(tmp_path)
    with pytest.raises(EventFormatError, match=r"several event topics \['/cam0/events', '/cam1/events'\]; choose"):
        open_rosbag(path)
    first = open_rosbag(path, topic="/cam0/events")
    assert first.sensor_size == (346, 260)
    assert_same(read_all(first), concat(cam0))
    second = open_rosbag(path, topic="/cam1/events")
    assert second.sensor_size == (1280, 720) and second.details["message_type"] == "prophesee_event_msgs/msg/EventArray"
    assert_same(read_all(second), concat(cam1))
    for bad in ("/notes", "/missing"):
        with pytest.raises(EventFormatError, match=rf"topic '{bad}' is not an event topic.*event topics: \['/cam0/"
                                                   r"events', '/cam1/events'\].*/notes \(std_msgs/msg/String\)"):
            open_rosbag(path, topic=bad)


def test_bag_without_event_topic_lists_what_it_holds(tmp_path):
    note = STORE.types["std_msgs/msg/String"](data="hello")
    path = write_bag(tmp_path / "n.bag", {"/notes": ("std_msgs/msg/String", [note])})
    with pytest.raises(EventFormatError, match=r"no topic of type dvs_msgs/msg/EventArray or prophesee_event_msgs/"
                                               r"msg/EventArray; the bag holds: /notes \(std_msgs"):
        open_rosbag(path)


def test_width_height_must_agree_across_messages(tmp_path):
    rng = np.random.default_rng(4)
    messages = [random_events(rng, 10, (346, 260), (SEC0 + i) * 10**9) for i in range(3)]
    sizes = [(346, 260), (346, 260), (640, 480)]
    path = write_bag(tmp_path / "w.bag", {"/e": ("dvs_msgs/msg/EventArray", dvs_messages(messages, sizes=sizes))})
    opened = open_rosbag(path)
    assert opened.sensor_size == (346, 260)
    with pytest.raises(EventFormatError, match=r"topic /e: message 2 \(0-based\): width/height \(640, 480\) differ "
                                               r"from message 0's \(346, 260\)"):
        read_all(opened)


def test_sensor_size_argument(tmp_path):
    rng = np.random.default_rng(5)
    messages = [random_events(rng, 10, (32, 24), SEC0 * 10**9)]
    path = write_bag(tmp_path / "s.bag", {"/e": ("dvs_msgs/msg/EventArray", dvs_messages(messages, (32, 24)))})
    with pytest.raises(EventFormatError, match=r"states the sensor size \(32, 24\).*sensor_size is \(24, 32\)"):
        open_rosbag(path, sensor_size=(24, 32))
    with pytest.raises(EventFormatError, match="time_unit 's' does not apply"):
        open_rosbag(path, time_unit="s")
    # Messages with width = height = 0 state no size: the argument is used, and checked against.
    unset = write_bag(tmp_path / "u.bag", {"/e": ("dvs_msgs/msg/EventArray", dvs_messages(messages, (0, 0)))})
    assert open_rosbag(unset).sensor_size is None
    assert_same(read_all(open_rosbag(unset)), messages[0])
    assert open_rosbag(unset, sensor_size=(32, 24)).sensor_size == (32, 24)
    x_max = int(messages[0]["x"].max())
    with pytest.raises(EventFormatError, match=rf"x={x_max} is outside the sensor width {x_max}"):
        read_all(open_rosbag(unset, sensor_size=(x_max, 24)))


def test_coordinates_outside_the_stated_size(tmp_path):
    m = {"sec": np.full(4, SEC0), "nsec": np.arange(4) * 1000, "x": np.array([1, 2, 40, 3]), "y": np.ones(4, int),
         "p": np.ones(4, int)}
    first = random_events(np.random.default_rng(6), 7, (32, 24), (SEC0 - 1) * 10**9)
    path = write_bag(tmp_path / "o.bag", {"/e": ("dvs_msgs/msg/EventArray", dvs_messages([first, m], (32, 24)))})
    with pytest.raises(EventFormatError,
                       match=r"message 1 \(0-based\): event 9 \(0-based\): x=40 is outside the sensor width 32"):
        read_all(open_rosbag(path))


def test_time_going_back_between_messages(tmp_path):
    a = {"sec": np.full(3, SEC0 + 1), "nsec": np.array([0, 5_000, 9_000]), "x": np.ones(3, int), "y": np.ones(3, int),
         "p": np.zeros(3, int)}
    b = dict(a, nsec=np.array([8_000, 10_000, 11_000]))
    path = write_bag(tmp_path / "b.bag", {"/e": ("dvs_msgs/msg/EventArray", dvs_messages([a, b], (8, 8)))})
    with pytest.raises(EventFormatError, match=r"message 1 \(0-based\): event 3 \(0-based\): t=1600000001000008 us is "
                                               r"earlier than the previous event \(1600000001000009 us\)"):
        read_all(open_rosbag(path))


def test_malformed_messages(tmp_path):
    rng = np.random.default_rng(7)
    good = bytes(STORE.serialize_ros1(dvs_messages([random_events(rng, 6, (8, 8), SEC0 * 10**9)], (8, 8))[0],
                                      "dvs_msgs/msg/EventArray"))
    bad_polarity = bytearray(good)
    bad_polarity[-1] = 2  # the last event's bool
    path = write_bag(tmp_path / "p.bag", {"/e": ("dvs_msgs/msg/EventArray", [good, bytes(bad_polarity)])})
    with pytest.raises(EventFormatError, match=r"message 1 \(0-based\): event 11 \(0-based\): polarity p=2 is not 0"):
        read_all(open_rosbag(path))
    path = write_bag(tmp_path / "s.bag", {"/e": ("dvs_msgs/msg/EventArray", [good, good[:-5]])})
    with pytest.raises(EventFormatError, match=r"message 1 \(0-based\): the message declares 6 events"):
        read_all(open_rosbag(path))


def test_truncated_bag_file(tmp_path):
    rng = np.random.default_rng(8)
    messages = [random_events(rng, 500, (64, 48), (SEC0 + i) * 10**9) for i in range(4)]
    path = write_bag(tmp_path / "full.bag", {"/e": ("dvs_msgs/msg/EventArray", dvs_messages(messages, (64, 48)))})
    data = path.read_bytes()
    cut = tmp_path / "cut.bag"
    for end in (len(data) // 2, len(data) - 10, 20):
        cut.write_bytes(data[:end])
        with pytest.raises(EventFormatError, match="cut.bag"):
            read_all(open_rosbag(cut))


def test_other_layouts_of_the_type_go_through_the_deserialiser(tmp_path):
    """A fork's definition (int32 coordinates, other field order) has another md5: decoded with its own definition."""
    store = typestore(layouts=(("prophesee_event_msgs", FORK),))
    assert store.generate_msgdef("prophesee_event_msgs/msg/EventArray")[1] != "5e8beee5a6c107e504c2e78903c224b8"
    messages = [edge_message(), random_events(np.random.default_rng(9), 40, (640, 480), (SEC0 + 5) * 10**9)]
    path = write_bag(tmp_path / "f.bag", {"/prophesee/events": (
        "prophesee_event_msgs/msg/EventArray",
        dvs_messages(messages, (640, 480), package="prophesee_event_msgs", store=store))}, store=store)
    opened = open_rosbag(path)
    assert opened.sensor_size == (640, 480)
    assert_same(read_all(opened, 7), concat(messages))


def test_ros2_bag_folder(tmp_path):
    store = typestore(Stores.LATEST)
    messages = [edge_message(), random_events(np.random.default_rng(10), 300, (346, 260), (SEC0 + 5) * 10**9)]
    path = tmp_path / "ros2_bag"
    with Writer2(path, version=9) as writer:
        connection = writer.add_connection("/dvs/events", "dvs_msgs/msg/EventArray", typestore=store)
        for i, message in enumerate(dvs_messages(messages, store=store)):
            writer.write(connection, (SEC0 + i) * 10**9, store.serialize_cdr(message, "dvs_msgs/msg/EventArray"))
    opened = open_rosbag(path)
    assert opened.sensor_size == (346, 260) and opened.details["ros2"] is True
    assert_same(read_all(opened, 64), concat(messages))


def test_ros1_bag_needs_its_extension(tmp_path):
    messages = [random_events(np.random.default_rng(11), 3, (8, 8), SEC0 * 10**9)]
    path = write_bag(tmp_path / "e.bag", {"/e": ("dvs_msgs/msg/EventArray", dvs_messages(messages, (8, 8)))})
    renamed = path.rename(tmp_path / "e.orig")
    with pytest.raises(EventFormatError, match="must have the .bag extension"):
        open_rosbag(renamed)


def test_missing_rosbags_package_names_the_extra(tmp_path, monkeypatch):
    path = write_bag(tmp_path / "m.bag", {"/e": ("dvs_msgs/msg/EventArray", [])})
    monkeypatch.setitem(sys.modules, "rosbags.highlevel", None)
    with pytest.raises(MissingDependencyError, match=r"reading ROS bags.*anon_jax\[formats\]"):
        open_rosbag(path)
