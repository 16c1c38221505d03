"""Reader of event topics in ROS bags over the `rosbags` package: ROS 1 `.bag` files and ROS 2 bag folders.

Message types: `dvs_msgs/EventArray` (rpg_dvs_ros, ESIM, MVSEC) and `prophesee_event_msgs/EventArray`
(prophesee_ros_wrapper), both `Header header, uint32 height, uint32 width, Event[] events` with
`Event = uint16 x, uint16 y, time ts, bool polarity`.

- Decoding: ROS 1 messages whose definition hash equals that layout's (md5 5e8beee5..., the same for both
  packages) are decoded with NumPy straight from the serialised bytes (13-byte packed events), at memory
  speed; the message length must match its event count exactly. Other definitions of these type names
  (forks) and ROS 2 (CDR) messages go through rosbags' deserialiser with the bag's own definitions,
  which is much slower, and need the fields x, y, ts (sec, nanosec), polarity, width, height.
- Times: each event's `ts` as integer nanoseconds sec * 10**9 + nsec, rounded to the nearest microsecond,
  ties to even (`to_microseconds`): 1500 ns -> 2 us, 2500 ns -> 2 us, 2501 ns -> 3 us. The message and
  header stamps are not used.
- Sensor size: the messages' (width, height), which must be the same in every message of the topic;
  (0, 0) (some drivers leave them unset) means the bag states no size.
- Order: messages in bag time order, events in message order; times must not go backwards.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from anon_jax.events.container import (
    EventFile,
    check_max_events,
    find_problem,
    import_optional,
    merge_chunks,
    parse_sensor_size,
    raise_problem,
    to_microseconds,
)
from anon_jax.events.stream import EventFormatError

PACKAGES = ("dvs_msgs", "prophesee_event_msgs")
EVENT_TYPES = tuple(f"{package}/msg/EventArray" for package in PACKAGES)
EVENT_MSG = "uint16 x\nuint16 y\ntime ts\nbool polarity\n"
EVENT_ARRAY_MSG = "std_msgs/Header header\nuint32 height\nuint32 width\nEvent[] events\n"
_ROS1_MAGIC = b"#ROSBAG V2.0"
# One ROS 1 serialised event: no padding between fields.
_ROS1_EVENT = np.dtype([("x", "<u2"), ("y", "<u2"), ("sec", "<u4"), ("nsec", "<u4"), ("polarity", "u1")])


def event_typestore(ros2: bool = False):
    """A rosbags typestore (ROS1_NOETIC, or LATEST for ROS 2) with the EventArray types of PACKAGES registered."""
    typesys = import_optional("rosbags.typesys", "reading ROS bags")
    store = typesys.get_typestore(typesys.Stores.LATEST if ros2 else typesys.Stores.ROS1_NOETIC)
    types = {}
    for package in PACKAGES:
        types.update(typesys.get_types_from_msg(EVENT_MSG, f"{package}/msg/Event"))
        types.update(typesys.get_types_from_msg(EVENT_ARRAY_MSG, f"{package}/msg/EventArray"))
    store.register(types)
    return store


@functools.lru_cache(maxsize=None)
def _ros1_digest() -> str:
    """The ROS 1 md5 of the EventArray layout (the package name does not enter the hash)."""
    return event_typestore().generate_msgdef(EVENT_TYPES[0])[1]


def decode_ros1_event_array(raw, where: str) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
    """((width, height), columns) of one ROS 1 serialised EventArray; EventFormatError on a malformed message."""
    raw = memoryview(raw).cast("B")

    def u32(at: int) -> int:
        if at + 4 > len(raw):
            raise EventFormatError(f"{where}: the message ends at byte {len(raw)}, inside its header.")
        return struct.unpack_from("<I", raw, at)[0]

    # Header: uint32 seq, time stamp (2 x uint32), string frame_id (uint32 length + bytes).
    position = 16 + u32(12)
    height, width, count = u32(position), u32(position + 4), u32(position + 8)
    position += 12
    if len(raw) - position != count * _ROS1_EVENT.itemsize:
        raise EventFormatError(
            f"{where}: the message declares {count} events ({count * _ROS1_EVENT.itemsize} bytes) but holds "
            f"{len(raw) - position} bytes after its header; it is truncated or not a dvs_msgs/EventArray.")
    records = np.frombuffer(raw, dtype=_ROS1_EVENT, count=count, offset=position)
    nanoseconds = records["sec"].astype(np.int64) * 1_000_000_000 + records["nsec"]
    columns = {"t": to_microseconds(nanoseconds, "ns", where=where), "x": records["x"].astype(np.uint16),
               "y": records["y"].astype(np.uint16), "p": records["polarity"].copy()}
    return (width, height), columns


def _decode_message(message, where: str) -> tuple[tuple[int, int], dict[str, np.ndarray]]:
    """((width, height), columns) of a deserialised EventArray of any field layout with the expected names."""
    try:
        width, height, events = int(message.width), int(message.height), message.events
        x = np.array([event.x for event in events], dtype=np.int64)
        y = np.array([event.y for event in events], dtype=np.int64)
        p = np.array([event.polarity for event in events], dtype=np.int64)
        nanoseconds = np.array([event.ts.sec * 1_000_000_000 + event.ts.nanosec for event in events], dtype=np.int64)
    except AttributeError as error:
        raise EventFormatError(
            f"{where}: message type {getattr(message, '__msgtype__', '?')} lacks a field the reader needs "
            f"({error}); expected width, height and events with x, y, ts (sec, nanosec), polarity.") from None
    for name, values, limit in (("x", x, 65535), ("y", y, 65535), ("polarity", p, 1)):
        bad = np.flatnonzero((values < 0) | (values > limit))
        if bad.size:
            raise EventFormatError(
                f"{where}: event {bad[0]} of the message: {name}={values[bad[0]]} is outside 0..{limit}.")
    columns = {"t": to_microseconds(nanoseconds, "ns", where=where), "x": x.astype(np.uint16),
               "y": y.astype(np.uint16), "p": p.astype(np.uint8)}
    return (width, height), columns


class _Bag:
    """An opened bag (context manager) and the decoder of the chosen topic's messages."""

    def __init__(self, path: str):
        self.path = path
        highlevel = import_optional("rosbags.highlevel", "reading ROS bags")
        is_file = os.path.isfile(path)
        if is_file:
            with open(path, "rb") as file:
                if file.read(len(_ROS1_MAGIC)) == _ROS1_MAGIC and not path.endswith(".bag"):
                    raise EventFormatError(f"{path}: a ROS 1 bag must have the .bag extension to be read; rename it.")
        self.ros2 = not (is_file and path.endswith(".bag"))
        self.fast_digest = None if self.ros2 else _ros1_digest()
        # ROS 1 bags embed their message definitions; ROS 2 bags may not (then these types are used).
        default = event_typestore(ros2=True) if self.ros2 else None
        try:
            self.reader = highlevel.AnyReader([Path(path)], default_typestore=default)
            self.reader.open()
        except Exception as error:
            raise EventFormatError(
                f"{path}: cannot open the ROS bag: {error}. A ROS 1 bag that was cut short or never closed lacks "
                "its index at the end: `rosbag reindex` can rebuild it.") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.reader.close()
        return False

    def topics(self) -> dict[str, str | None]:
        return {name: info.msgtype for name, info in sorted(self.reader.topics.items())}

    def messages(self, topic: str) -> Iterator[tuple[int, tuple[int, int], dict[str, np.ndarray]]]:
        """(message index, (width, height), columns) for each message of `topic`, in bag time order."""
        connections = [connection for connection in self.reader.connections if connection.topic == topic]
        stream = self.reader.messages(connections=connections)
        index = 0
        while True:
            try:
                connection, _, raw = next(stream)
            except StopIteration:
                return
            except Exception as error:
                raise EventFormatError(
                    f"{self.path}: topic {topic}: message {index} cannot be read: {error}. The bag is truncated or "
                    "corrupt.") from None
            where = f"{self.path}: topic {topic}: message {index} (0-based)"
            if connection.digest == self.fast_digest:
                size, columns = decode_ros1_event_array(raw, where)
            else:
                try:
                    message = self.reader.deserialize(raw, connection.msgtype)
                except Exception as error:
                    raise EventFormatError(f"{where}: cannot be deserialised: {error}") from None
                size, columns = _decode_message(message, where)
            yield index, size, columns
            index += 1


def _choose_topic(path: str, topics: dict[str, str | None], topic: str | None) -> str:
    events = [name for name, kind in topics.items() if kind in EVENT_TYPES]
    listing = ", ".join(f"{name} ({kind})" for name, kind in topics.items()) or "none"
    if topic is not None:
        if topic not in events:
            raise EventFormatError(
                f"{path}: topic {topic!r} is not an event topic of this bag (types {', '.join(EVENT_TYPES)}); "
                f"event topics: {events}; all topics: {listing}.")
        return topic
    if not events:
        raise EventFormatError(
            f"{path}: no topic of type {' or '.join(EVENT_TYPES)}; the bag holds: {listing}.")
    if len(events) > 1:
        raise EventFormatError(f"{path}: several event topics {events}; choose one with topic=.")
    return events[0]


def _stated_size(size: tuple[int, int], where: str) -> tuple[int, int] | None:
    return None if size == (0, 0) else parse_sensor_size(size, f"{where}: width/height")


def open_rosbag(path: str | os.PathLike, *, sensor_size=None, time_unit=None, topic: str | None = None) -> EventFile:
    """Open the event topic of a ROS 1 bag or ROS 2 bag folder; its messages stream in chunks of max_events.

    topic: the EventArray topic to read; needed when the bag has several. sensor_size: None or
    (width, height), which must equal the messages' width/height when they state one. time_unit: None or
    "us" (ROS times are converted to microseconds). details: topic, message_type, messages, topics, ros2.
    """
    path = os.fspath(path)
    if time_unit not in (None, "us"):
        raise EventFormatError(
            f"{path}: time_unit {time_unit!r} does not apply: ROS times are (sec, nsec), converted to microseconds "
            "(pass None or 'us').")
    given = None if sensor_size is None else parse_sensor_size(sensor_size, f"{path}: sensor_size")
    with _Bag(path) as bag:
        topics = bag.topics()
        chosen = _choose_topic(path, topics, topic)
        count = bag.reader.topics[chosen].msgcount
        messages = bag.messages(chosen)
        first = next(messages, None)
        messages.close()
        ros2 = bag.ros2
    stated = None if first is None else _stated_size(first[1], f"{path}: topic {chosen}: message 0")
    if given is not None and stated is not None and given != stated:
        raise EventFormatError(
            f"{path}: topic {chosen} states the sensor size {stated} (width, height) but sensor_size is {given}.")
    size = stated or given
    width, height = size if size is not None else (None, None)
    first_size = None if first is None else first[1]

    def events() -> Iterator[dict[str, np.ndarray]]:
        first_event, previous_t = 0, None
        with _Bag(path) as bag:
            for index, message_size, columns in bag.messages(chosen):
                where = f"{path}: topic {chosen}: message {index} (0-based)"
                if message_size != first_size:
                    raise EventFormatError(
                        f"{where}: width/height {message_size} differ from message 0's {first_size}; the topic "
                        "mixes sensors.")
                problem = find_problem(columns["t"], columns["x"], columns["y"], columns["p"], width, height,
                                       previous_t)
                if problem is not None:
                    raise_problem(problem, where, first_event)
                if columns["t"].size:
                    first_event += columns["t"].size
                    previous_t = int(columns["t"][-1])
                yield columns

    def chunks(max_events: int) -> Iterator[dict[str, np.ndarray]]:
        return merge_chunks(events(), check_max_events(max_events, path))

    details = {"topic": chosen, "message_type": topics[chosen], "messages": count, "topics": topics, "ros2": ros2}
    return EventFile(path=path, format="rosbag", sensor_size=size, chunks=chunks, time_unit="us", details=details)
