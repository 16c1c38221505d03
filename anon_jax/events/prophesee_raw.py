"""Prophesee RAW files (EVT 2.0, EVT 2.1, EVT 3.0 payloads): header parsing and vectorised decoding.

Layouts follow ``shared/reference/event_formats.md`` (sections 3.1-3.3). Output is the project's
canonical form: ``t`` int64 microseconds (raw sensor time, no base-time shift), ``x``/``y`` uint16,
``p`` uint8 with 1 = ON, in file order. EVT 3.0 words are decoded by ``anon_jax.events.evt3``.

Choices where the format notes leave room (kept in one place so callers can rely on them):

- Events before the first TIME_HIGH word get a time base of 0 (t = the 6-bit LSB), as faery and
  evlib do. OpenEB instead discards them; discarding would drop data silently, so we keep them.
- The 28-bit TIME_HIGH counter wraps every 2^34 us. A loop is counted when a TIME_HIGH value is more
  than half the counter range (2^27) below the previous one; smaller decreases are kept as they are.
- ``format EVT21`` without an ``endianness`` option is the non-legacy (little-endian 64-bit) layout.
  A header with only ``% evt 2.1`` and no ``format`` line predates the option and came from IMX636
  sensors, so it is read as legacy. ``read_raw(..., evt21_layout=...)`` overrides both.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from anon_jax.events.container import COLUMNS, DTYPES, EventFile, header_int, parse_sensor_size
from anon_jax.events.evt3 import Evt3Decoder
from anon_jax.events.stream import EventFormatError

__all__ = [
    "RawHeader",
    "decode_evt2",
    "decode_evt21",
    "open_raw",
    "read_raw",
    "read_raw_header",
]

# Word types (the top 4 bits) shared by EVT 2.0 and EVT 2.1.
_CD_OFF = 0x0
_CD_ON = 0x1
_TIME_HIGH = 0x8
_EXT_TRIGGER = 0xA
_OTHERS = 0xE
_CONTINUED = 0xF
_VALID_TYPES = np.array([_CD_OFF, _CD_ON, _TIME_HIGH, _EXT_TRIGGER, _OTHERS, _CONTINUED], dtype=np.uint8)

_TH_BITS = 28
_TH_MASK = (1 << _TH_BITS) - 1
_LOOP_DROP = 1 << (_TH_BITS - 1)  # a decrease larger than this is a counter wrap, not jitter

_WORD_SIZE = {"EVT2": 4, "EVT21": 8, "EVT3": 2}
_FORMAT_NAMES = {
    "EVT2": "EVT2", "EVT2.0": "EVT2", "EVT20": "EVT2",
    "EVT21": "EVT21", "EVT2.1": "EVT21",
    "EVT3": "EVT3", "EVT3.0": "EVT3", "EVT30": "EVT3",
}
_EVT_VERSIONS = {"2": "EVT2", "2.0": "EVT2", "2.1": "EVT21", "3": "EVT3", "3.0": "EVT3"}
_EXPAND_CHUNK = 1 << 20  # EVT 2.1 words expanded at a time (32 bytes of temporaries per word)
_MAX_HEADER_LINE = 1 << 16


@dataclasses.dataclass(frozen=True)
class RawHeader:
    """Parsed ASCII header of a Prophesee RAW file.

    ``layout`` is "legacy" or "little" for EVT21 and None otherwise; ``lines`` maps each header key
    to its value (the last one wins); ``payload_offset`` is the byte where the binary words start.
    """

    format: str
    width: int | None
    height: int | None
    layout: str | None
    lines: dict[str, str]
    payload_offset: int

    @property
    def word_size(self) -> int:
        """Bytes per payload word."""
        return _WORD_SIZE[self.format]


def _merge_size(current: tuple[int | None, int | None], new: tuple[int, int], *, source: str,
                where: str) -> tuple[int, int]:
    """Combine two header statements of the sensor size; contradicting ones are an error."""
    if current[0] is not None and current != new:
        raise EventFormatError(
            f"{source}: {where}: sensor size {new[0]}x{new[1]} contradicts the earlier {current[0]}x{current[1]}"
        )
    return new


def read_raw_header(path: str | os.PathLike) -> RawHeader:
    """Parse the ``% key value`` header of a RAW file and return its format, size and payload offset."""
    source = os.fspath(path)
    lines: dict[str, str] = {}
    fmt: str | None = None
    fmt_where = ""
    layout: str | None = None
    size: tuple[int | None, int | None] = (None, None)
    with open(source, "rb") as f:
        line_no = 0
        while True:
            start = f.tell()
            line = f.readline(_MAX_HEADER_LINE)
            # A header line starts with "% " (or is a bare "%"); anything else is the first payload byte.
            if not line or not (line.startswith(b"% ") or line.rstrip(b"\r\n") == b"%"):
                payload_offset = start
                break
            line_no += 1
            if not line.endswith(b"\n"):
                raise EventFormatError(f"{source}: header line {line_no} (byte {start}) is not terminated by a newline")
            try:
                text = line.decode("ascii").rstrip("\r\n")
            except UnicodeDecodeError:
                raise EventFormatError(f"{source}: header line {line_no} (byte {start}) is not ASCII") from None
            body = text[1:].strip()
            if body == "end":
                payload_offset = f.tell()
                break
            if not body:
                continue
            key, _, value = body.partition(" ")
            value = value.strip()
            lines[key] = value
            where = f"header line {line_no} {text!r}"
            if key == "format":
                name, *options = value.split(";")
                name = name.strip().upper()
                if name not in _FORMAT_NAMES:
                    raise EventFormatError(
                        f"{source}: {where}: unknown RAW format {name!r} (expected EVT2, EVT21 or EVT3)"
                    )
                opts = {}
                for option in options:
                    k, sep, v = option.partition("=")
                    if not sep:
                        raise EventFormatError(f"{source}: {where}: format option {option!r} is not key=value")
                    opts[k.strip()] = v.strip()
                new_fmt = _FORMAT_NAMES[name]
                if fmt is not None and fmt != new_fmt:
                    raise EventFormatError(f"{source}: {where}: format {new_fmt} contradicts {fmt_where}")
                fmt, fmt_where = new_fmt, where
                if "width" in opts or "height" in opts:
                    if "width" not in opts or "height" not in opts:
                        raise EventFormatError(f"{source}: {where}: format gives only one of width/height")
                    new = (header_int(opts["width"], source=source, where=where, field="width"),
                           header_int(opts["height"], source=source, where=where, field="height"))
                    size = _merge_size(size, new, source=source, where=where)
                if "endianness" in opts:
                    endianness = opts["endianness"].lower()
                    if endianness not in ("legacy", "little"):
                        raise EventFormatError(
                            f"{source}: {where}: unsupported endianness {opts['endianness']!r} "
                            "(only 'legacy' and little-endian files can be read)"
                        )
                    layout = endianness
                elif new_fmt == "EVT21":
                    layout = "little"
            elif key == "evt":
                if value not in _EVT_VERSIONS:
                    raise EventFormatError(
                        f"{source}: {where}: unknown EVT version {value!r} (expected 2.0, 2.1 or 3.0)"
                    )
                new_fmt = _EVT_VERSIONS[value]
                if fmt is not None and fmt != new_fmt:
                    raise EventFormatError(f"{source}: {where}: EVT version contradicts {fmt_where}")
                if fmt is None:
                    fmt, fmt_where = new_fmt, where
            elif key == "geometry":
                w, sep, h = value.lower().partition("x")
                if not sep:
                    raise EventFormatError(f"{source}: {where}: geometry must look like WIDTHxHEIGHT")
                new = (header_int(w, source=source, where=where, field="width"),
                       header_int(h, source=source, where=where, field="height"))
                size = _merge_size(size, new, source=source, where=where)
    if fmt is None:
        raise EventFormatError(
            f"{source}: the RAW header (bytes 0-{payload_offset}) has no '% format ...' or '% evt ...' line, "
            "so the event encoding is unknown"
        )
    if fmt == "EVT21" and layout is None:
        layout = "legacy"  # only '% evt 2.1': pre-'endianness' IMX636 files (see module docstring)
    if fmt != "EVT21":
        layout = None
    return RawHeader(format=fmt, width=size[0], height=size[1], layout=layout, lines=lines,
                     payload_offset=payload_offset)


def _check_words(words, dtype, *, source: str, name: str) -> np.ndarray:
    array = np.asarray(words)
    if array.ndim != 1 or array.dtype != dtype:
        raise EventFormatError(f"{source}: {name} must be a 1-D {np.dtype(dtype).name} array, got "
                               f"{array.dtype} with shape {array.shape}")
    return array


def _check_types(types: np.ndarray, words: np.ndarray, *, source: str, byte_offset: int, word_size: int) -> None:
    bad = np.flatnonzero(~np.isin(types, _VALID_TYPES))
    if bad.size:
        i = int(bad[0])
        raise EventFormatError(
            f"{source}: word {i} at byte {byte_offset + i * word_size} has invalid type 0x{int(types[i]):X} "
            f"(word 0x{int(words[i]):0{2 * word_size}X}); the file is corrupt or not EVT "
            f"{'2.0' if word_size == 4 else '2.1'}"
        )


def _time_bases(types: np.ndarray, time_high: np.ndarray, at: np.ndarray,
                previous: int | None = None) -> tuple[np.ndarray, int | None]:
    """Unwrapped TIME_HIGH value in force at each word index in ``at``, and the last one after these words.

    ``time_high`` holds the 28-bit field of every word (used only where the type is TIME_HIGH);
    ``previous`` is the unwrapped TIME_HIGH in force before these words (None: none seen yet, base 0).
    """
    th_pos = np.flatnonzero(types == _TIME_HIGH)
    if th_pos.size == 0:
        return np.full(at.shape, previous or 0, dtype=np.int64), previous
    raw = time_high[th_pos].astype(np.int64)
    first_loops, previous_raw = (0, raw[0]) if previous is None else (previous >> _TH_BITS, previous & _TH_MASK)
    loops = first_loops + np.cumsum(np.diff(raw, prepend=previous_raw) < -_LOOP_DROP)
    th = raw + (loops << _TH_BITS)
    k = np.searchsorted(th_pos, at, side="right") - 1  # last TIME_HIGH at or before each word
    return np.where(k >= 0, th[np.maximum(k, 0)], previous or 0), int(th[-1])


def _check_coordinates(x: np.ndarray, y: np.ndarray, word_of_event: np.ndarray, sensor_size, *, source: str,
                       byte_offset: int, word_size: int) -> None:
    if sensor_size is None:
        return
    width, height = (int(v) for v in sensor_size)
    bad = np.flatnonzero((x >= width) | (y >= height))
    if bad.size:
        i = int(bad[0])
        where = "" if word_of_event is None else f" (word at byte {byte_offset + int(word_of_event[i]) * word_size})"
        raise EventFormatError(
            f"{source}: event {i}{where} has "
            f"x={int(x[i])}, y={int(y[i])}, outside the {width}x{height} sensor "
            f"({bad.size} such events); check the header geometry or pass sensor_size"
        )


def _decode_evt2(words: np.ndarray, source: str, byte_offset: int, sensor_size,
                 previous: int | None) -> tuple[dict[str, np.ndarray], int | None]:
    words = _check_words(words, np.uint32, source=source, name="EVT 2.0 words")
    types = (words >> 28).astype(np.uint8)
    _check_types(types, words, source=source, byte_offset=byte_offset, word_size=4)
    cd_idx = np.flatnonzero(types <= _CD_ON)
    cd = words[cd_idx]
    base, last = _time_bases(types, words & _TH_MASK, cd_idx, previous)
    t = (base << 6) + ((cd >> 22) & 0x3F).astype(np.int64)
    x = ((cd >> 11) & 0x7FF).astype(np.uint16)
    y = (cd & 0x7FF).astype(np.uint16)
    p = types[cd_idx]
    _check_coordinates(x, y, cd_idx, sensor_size, source=source, byte_offset=byte_offset, word_size=4)
    return {"t": t, "x": x, "y": y, "p": p}, last


def decode_evt2(words: np.ndarray, *, source: str, byte_offset: int = 0,
                sensor_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Decode EVT 2.0 words (uint32, already in host order) into t/x/y/p arrays in file order.

    ``byte_offset`` is the file position of ``words[0]`` and ``source`` names the data in errors.
    With ``sensor_size=(W, H)`` an event with x >= W or y >= H raises EventFormatError.
    """
    return _decode_evt2(words, source, byte_offset, sensor_size, None)[0]


def _decode_evt21(words: np.ndarray, legacy: bool, source: str, byte_offset: int, sensor_size,
                  previous: int | None) -> tuple[dict[str, np.ndarray], int | None]:
    words = _check_words(words, np.uint64, source=source, name="EVT 2.1 words")
    logical = (words << np.uint64(32)) | (words >> np.uint64(32)) if legacy else words
    types = (logical >> np.uint64(60)).astype(np.uint8)
    _check_types(types, logical, source=source, byte_offset=byte_offset, word_size=8)
    high = (logical >> np.uint64(32)).astype(np.uint32)  # type, ts LSB, x base, y / TIME_HIGH field
    cd_idx = np.flatnonzero(types <= _CD_ON)
    base, last = _time_bases(types, high & _TH_MASK, cd_idx, previous)
    cd_high = high[cd_idx]
    t_word = (base << 6) + ((cd_high >> 22) & 0x3F).astype(np.int64)
    x_word = ((cd_high >> 11) & 0x7FF).astype(np.uint16)
    y_word = (cd_high & 0x7FF).astype(np.uint16)
    p_word = types[cd_idx]
    masks = np.ascontiguousarray(logical[cd_idx].astype(np.uint32).astype("<u4"))
    parts: dict[str, list[np.ndarray]] = {"t": [], "x": [], "y": [], "p": [], "w": []}
    # Expand the 32-bit validity masks a chunk at a time so temporaries stay bounded on big files.
    for lo in range(0, masks.size, _EXPAND_CHUNK):
        chunk = masks[lo:lo + _EXPAND_CHUNK]
        bits = np.unpackbits(chunk.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")
        row, bit = np.nonzero(bits)  # row-major: word order, then increasing bit = increasing x
        row += lo
        parts["t"].append(t_word[row])
        parts["x"].append(x_word[row] + bit.astype(np.uint16))
        parts["y"].append(y_word[row])
        parts["p"].append(p_word[row])
        parts["w"].append(cd_idx[row])
    empty = {"t": np.int64, "x": np.uint16, "y": np.uint16, "p": np.uint8, "w": np.intp}
    out = {k: (np.concatenate(v) if v else np.zeros(0, dtype=empty[k])) for k, v in parts.items()}
    word_of_event = out.pop("w")
    _check_coordinates(out["x"], out["y"], word_of_event, sensor_size, source=source, byte_offset=byte_offset,
                       word_size=8)
    return out, last


def decode_evt21(words: np.ndarray, *, legacy: bool, source: str, byte_offset: int = 0,
                 sensor_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Decode EVT 2.1 words into t/x/y/p arrays in file order (within a word, by increasing x).

    ``words`` are the file's 8-byte words read as little-endian uint64 (host order). With
    ``legacy=True`` (IMX636 ``endianness=legacy``) each file word holds the type/time/x/y half first
    and the validity mask second, so the two 32-bit halves are swapped to get the logical word.
    """
    return _decode_evt21(words, legacy, source, byte_offset, sensor_size, None)[0]


def _sensor_size(header: RawHeader, sensor_size, source: str) -> tuple[int, int]:
    """The header's (width, height), or the argument; both given must agree."""
    stated = (header.width, header.height) if header.width is not None else None
    if sensor_size is not None:
        sensor_size = parse_sensor_size(sensor_size, f"{source}: sensor_size")
        if stated is not None and sensor_size != stated:
            raise EventFormatError(
                f"{source}: sensor_size={sensor_size} contradicts the header's {stated[0]}x{stated[1]}; drop the "
                "argument or fix the header.")
        return sensor_size
    if stated is None:
        raise EventFormatError(
            f"{source}: the RAW header has no sensor size ('% geometry WxH' or width/height in '% format'); "
            "pass sensor_size=(width, height)")
    return stated


def open_raw(path: str | os.PathLike, *, sensor_size: tuple[int, int] | None = None, time_unit: str | None = None,
             evt21_layout: str | None = None) -> EventFile:
    """An EVT 2.0 / EVT 2.1 / EVT 3.0 RAW file, streamed from a memory map (formats "evt2", "evt21", "evt3").

    ``sensor_size=(W, H)`` provides the size when the header has none (it must agree with a stated one).
    ``evt21_layout`` ("legacy" or "little") overrides the EVT 2.1 byte layout from the header.
    A ``% t0 N`` header line (written by faery's zero_t0 option) is added to every time, as faery reads it.
    """
    source = os.fspath(path)
    header = read_raw_header(source)
    if time_unit not in (None, "us"):
        raise EventFormatError(f"{source}: RAW files store microseconds; drop time_unit={time_unit!r}.")
    size = _sensor_size(header, sensor_size, source)
    layout = header.layout
    if header.format == "EVT21" and evt21_layout is not None:
        if evt21_layout not in ("legacy", "little"):
            raise EventFormatError(f"evt21_layout must be 'legacy' or 'little', got {evt21_layout!r}")
        layout = evt21_layout
    # faery's `% t0` line: it wrote times minus t0 (its zero_t0 option) and adds t0 back on reading, as we do.
    t0 = header_int(header.lines["t0"], source=source, where="header line '% t0'", field="t0", minimum=0) \
        if "t0" in header.lines else 0
    word_size = header.word_size
    n_words, rest = divmod(os.path.getsize(source) - header.payload_offset, word_size)
    dtype = np.dtype({2: "<u2", 4: "<u4", 8: "<u8"}[word_size])

    def chunks(max_events: int):
        if rest:
            raise EventFormatError(
                f"{source}: truncated {header.format} payload: the word at byte "
                f"{header.payload_offset + n_words * word_size} has only {rest} of {word_size} bytes")
        if n_words == 0:
            return
        words = np.memmap(source, dtype=dtype, mode="r", offset=header.payload_offset, shape=(n_words,))
        # One EVT 2.1 word holds up to 32 events, an EVT 3.0 vector word 12.
        step = max(1, int(max_events) // 8) if header.format == "EVT21" else max(1, int(max_events))
        decoder = Evt3Decoder(source=source, byte_offset=header.payload_offset)
        time_high = None
        for start in range(0, n_words, step):
            block = np.asarray(words[start:start + step]).astype(dtype.newbyteorder("="), copy=False)
            offset = header.payload_offset + start * word_size
            if header.format == "EVT3":
                events = decoder.decode(block)
                _check_coordinates(events["x"], events["y"], None, size, source=source, byte_offset=offset,
                                   word_size=word_size)
            elif header.format == "EVT2":
                events, time_high = _decode_evt2(block, source, offset, size, time_high)
            else:
                events, time_high = _decode_evt21(block, layout == "legacy", source, offset, size, time_high)
            if t0:
                events["t"] += t0
            yield events

    return EventFile(path=source, format=header.format.lower(), sensor_size=size, chunks=chunks,
                     details={"header": header.lines, "evt21_layout": layout})


def read_raw(path: str | os.PathLike, *, sensor_size: tuple[int, int] | None = None,
             evt21_layout: str | None = None) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """A whole RAW file as ({"t", "x", "y", "p"}, (width, height)); see `open_raw`."""
    opened = open_raw(path, sensor_size=sensor_size, evt21_layout=evt21_layout)
    parts = list(opened.chunks(1 << 22))
    events = {name: np.concatenate([part[name] for part in parts]) if parts else np.zeros(0, DTYPES[name])
              for name in COLUMNS}
    return events, opened.sensor_size
