"""Prophesee RAW EVT 2.0 / EVT 2.1 reader: spec-following encoders in the test, hand-decoded words, errors."""

from __future__ import annotations

import numpy as np
import pytest
import test_evt3

from anon_jax.events.prophesee_raw import (
    decode_evt2,
    decode_evt21,
    read_raw,
    read_raw_header,
)
from anon_jax.events.stream import EventFormatError

TH_MASK = (1 << 28) - 1


# --- encoders written from the format notes (section 3.2 / 3.3), one event or group at a time ---

def encode_evt2(t, x, y, p, *, noise_every=0):
    """EVT 2.0 words: a TIME_HIGH whenever t[33:6] changes, then one CD word per event."""
    words, current = [], None
    for i, (ti, xi, yi, pi) in enumerate(zip(t, x, y, p)):
        high = (int(ti) >> 6) & TH_MASK
        if high != current:
            words.append((0x8 << 28) | high)
            current = high
        words.append((int(pi) << 28) | ((int(ti) & 63) << 22) | (int(xi) << 11) | int(yi))
        if noise_every and i % noise_every == 0:
            words.append((0xA << 28) | ((int(ti) & 63) << 22) | (3 << 8) | 1)  # EXT_TRIGGER, skipped
            words.append((0xE << 28) | 0x123456)  # OTHERS, skipped
            words.append((0xF << 28) | 0x0ABCDEF)  # CONTINUED, skipped
    return np.array(words, dtype=np.uint32)


def encode_evt21(t, x, y, p, *, legacy, noise_every=0):
    """EVT 2.1 file bytes: consecutive events sharing (t, y, p) and a 32-pixel x group share one word.

    Each word is written as two explicit little-endian 32-bit halves: (mask, high) for the
    non-legacy layout (a little-endian 64-bit word), (high, mask) for the legacy layout.
    """
    halves, current, group = [], None, None

    def flush():
        if group is not None:
            ti, yi, pi, base, mask = group
            high = (pi << 28) | ((ti & 63) << 22) | (base << 11) | yi
            halves.append((high, mask))

    for i, (ti, xi, yi, pi) in enumerate(zip(t, x, y, p)):
        ti, xi, yi, pi = int(ti), int(xi), int(yi), int(pi)
        th = (ti >> 6) & TH_MASK
        if group is not None:
            gt, gy, gp, base, mask = group
            if gt == ti and gy == yi and gp == pi and base <= xi < base + 32 and (mask >> (xi - base)) == 0:
                group = (gt, gy, gp, base, mask | (1 << (xi - base)))
                continue
            flush()
            group = None
        if th != current:
            halves.append(((0x8 << 28) | th, 0))
            current = th
        base = xi & ~31
        group = (ti, yi, pi, base, 1 << (xi - base))
        if noise_every and i % noise_every == 0:
            flush()
            group = None
            halves.append(((0xA << 28) | (5 << 8), 0xDEADBEEF))  # EXT_TRIGGER, skipped
            halves.append(((0xE << 28) | 7, 0x1234))  # OTHERS, skipped
    flush()
    pairs = [(h, m) if legacy else (m, h) for h, m in halves]
    n_cd = sum(1 for h, _ in halves if (h >> 28) <= 1)
    return np.array(pairs, dtype="<u4").tobytes(), n_cd


def header(fmt_line, *, geometry=None, evt=None, end=True):
    lines = ["% date 2026-01-01 00:00:00", "% plugin_name hal_plugin_test"]
    if evt is not None:
        lines.append(f"% evt {evt}")
    if fmt_line is not None:
        lines.append(f"% format {fmt_line}")
    if geometry is not None:
        lines.append(f"% geometry {geometry}")
    if end:
        lines.append("% end")
    return ("\n".join(lines) + "\n").encode("ascii")


def random_events(rng, n, width, height, *, start=0):
    # Gaps from 0 to several TIME_HIGH periods (64 us), plus a few long jumps.
    gaps = rng.choice([0, 0, 0, 1, 5, 63, 64, 200, 10_000], size=n)
    t = start + np.cumsum(gaps)
    x = rng.integers(0, width, n)
    y = rng.integers(0, height, n)
    p = rng.integers(0, 2, n)
    return t.astype(np.int64), x, y, p


def assert_events(events, t, x, y, p):
    assert events["t"].dtype == np.int64 and events["x"].dtype == np.uint16
    assert events["y"].dtype == np.uint16 and events["p"].dtype == np.uint8
    np.testing.assert_array_equal(events["t"], t)
    np.testing.assert_array_equal(events["x"], x)
    np.testing.assert_array_equal(events["y"], y)
    np.testing.assert_array_equal(events["p"], p)


# --- hand-decoded words ---

def test_evt2_single_word_by_hand():
    # TIME_HIGH 3, then CD_ON with LSB 42 (0x2A << 22 = 0x0A800000), x=100 (0x32000), y=37 (0x25).
    words = np.array([0x80000003, 0x1A832025], dtype=np.uint32)
    ev = decode_evt2(words, source="hand")
    assert_events(ev, [3 * 64 + 42], [100], [37], [1])
    # CD_OFF, LSB 0, x=0, y=0 after no TIME_HIGH at all: time base 0 (events before the first
    # TIME_HIGH are kept, not dropped).
    ev = decode_evt2(np.array([0x00000000, 0x80000001, 0x00400001], dtype=np.uint32), source="hand")
    assert_events(ev, [0, 64 + 1], [0, 0], [0, 1], [0, 0])


def test_evt21_single_word_by_hand_both_layouts():
    # Logical CD word: type 0, LSB 1, x base 64, y 10 -> high half 0x0042000A; mask 0b1001 -> x 64 and 67.
    expected = ([5 * 64 + 1] * 2, [64, 67], [10, 10], [0, 0])
    little = np.array([0x8000000500000000, 0x0042000A00000009], dtype=np.uint64)
    assert_events(decode_evt21(little, legacy=False, source="hand"), *expected)
    # Legacy: high half first in the file, so the little-endian uint64 has the halves swapped.
    legacy = np.array([0x0000000080000005, 0x000000090042000A], dtype=np.uint64)
    assert_events(decode_evt21(legacy, legacy=True, source="hand"), *expected)


def test_evt21_legacy_bytes_on_disk(tmp_path):
    # The same two words as raw bytes, as an IMX636 would write them.
    payload = bytes.fromhex("05000080 00000000 0a004200 09000000".replace(" ", ""))
    path = tmp_path / "hand.raw"
    path.write_bytes(header("EVT21;height=20;width=100;endianness=legacy") + payload)
    ev, size = read_raw(path)
    assert size == (100, 20)
    assert_events(ev, [321, 321], [64, 67], [10, 10], [0, 0])


# --- round trips ---

def test_evt2_round_trip_with_time_high_wrap(tmp_path):
    rng = np.random.default_rng(0)
    w, h = 640, 480
    t1, x1, y1, p1 = random_events(rng, 3000, w, h, start=123)
    # Second part straddles 2^34 us, where the 28-bit TIME_HIGH counter wraps to 0.
    t2, x2, y2, p2 = random_events(rng, 3000, w, h, start=(1 << 34) - 5000)
    t, x, y, p = (np.concatenate(a) for a in ((t1, t2), (x1, x2), (y1, y2), (p1, p2)))
    assert t[-1] > (1 << 34) > t[3000]
    words = encode_evt2(t, x, y, p, noise_every=97)
    assert np.count_nonzero((words >> 28) == 8) > 100
    path = tmp_path / "rec.raw"
    path.write_bytes(header(f"EVT2;height={h};width={w}", evt="2.0", geometry=f"{w}x{h}") + words.astype("<u4").tobytes())
    hdr = read_raw_header(path)
    assert (hdr.format, hdr.width, hdr.height, hdr.layout) == ("EVT2", w, h, None)
    assert hdr.lines["plugin_name"] == "hal_plugin_test"
    assert hdr.payload_offset == len(header(f"EVT2;height={h};width={w}", evt="2.0", geometry=f"{w}x{h}"))
    ev, size = read_raw(path)
    assert size == (w, h)
    assert_events(ev, t, x, y, p)


@pytest.mark.parametrize("legacy", [False, True])
def test_evt21_round_trip_both_layouts(tmp_path, legacy):
    rng = np.random.default_rng(1)
    w, h = 1280, 720
    n = 4000
    t, _, y, p = random_events(rng, n, w, h, start=(1 << 34) - 40_000)
    # Runs of events on one row with increasing x, so many words carry several valid bits.
    x = rng.integers(0, w, n)
    run = rng.integers(0, 2, n).astype(bool)
    for i in range(1, n):
        if run[i] and t[i] == t[i - 1] and x[i - 1] + 3 < w:
            y[i], p[i], x[i] = y[i - 1], p[i - 1], x[i - 1] + rng.integers(1, 4)
    payload, n_cd_words = encode_evt21(t, x, y, p, legacy=legacy, noise_every=211)
    assert n_cd_words < 0.9 * n  # vectorised words with several valid bits really were used
    suffix = ";endianness=legacy" if legacy else ""
    path = tmp_path / "rec21.raw"
    path.write_bytes(header(f"EVT21;height={h};width={w}{suffix}", evt="2.1") + payload)
    hdr = read_raw_header(path)
    assert (hdr.format, hdr.layout, hdr.word_size) == ("EVT21", "legacy" if legacy else "little", 8)
    ev, size = read_raw(path)
    assert size == (w, h)
    assert t[-1] > (1 << 34)
    assert_events(ev, t, x, y, p)
    # Reading with the wrong layout does not reproduce the events.
    wrong_layout = "little" if legacy else "legacy"
    try:
        wrong, _ = read_raw(path, evt21_layout=wrong_layout)
    except EventFormatError:
        pass
    else:
        assert wrong["t"].shape != t.shape or not np.array_equal(wrong["x"], x)


def test_evt21_full_mask_and_empty_file(tmp_path):
    # All 32 bits set: 32 events x = 32..63 at one time.
    words = np.array([0x8000000000000000 | (2 << 32), (1 << 60) | (7 << 54) | (32 << 43) | (3 << 32) | 0xFFFFFFFF],
                     dtype=np.uint64)
    ev = decode_evt21(words, legacy=False, source="m")
    assert_events(ev, [2 * 64 + 7] * 32, np.arange(32, 64), [3] * 32, [1] * 32)
    path = tmp_path / "empty.raw"
    path.write_bytes(header("EVT21;height=4;width=4"))
    ev, size = read_raw(path)
    assert size == (4, 4) and all(v.size == 0 for v in ev.values())


# --- header variants ---

def test_header_variants(tmp_path):
    path = tmp_path / "h.raw"
    path.write_bytes(header(None, evt="2.1", geometry="320x240"))
    hdr = read_raw_header(path)
    assert (hdr.format, hdr.width, hdr.height, hdr.layout) == ("EVT21", 320, 240, "legacy")
    path.write_bytes(header("EVT21;height=320;width=320"))
    assert read_raw_header(path).layout == "little"
    # No '% end': data starts at the first line that does not begin with '% '.
    words = encode_evt2([70], [1], [2], [1])
    path.write_bytes(header(None, evt="2.0", geometry="8x8", end=False) + words.astype("<u4").tobytes())
    hdr = read_raw_header(path)
    assert hdr.format == "EVT2" and hdr.payload_offset == len(header(None, evt="2.0", geometry="8x8", end=False))
    ev, size = read_raw(path)
    assert size == (8, 8)
    assert_events(ev, [70], [1], [2], [1])


def test_evt3_raw_file_round_trip_across_the_time_wrap(tmp_path):
    t, x, y, p = test_evt3.random_events(3, n=800)
    words, order = test_evt3.encode_evt3(t, x, y, p)
    t, x, y, p = t[order], x[order], y[order], p[order]
    path = tmp_path / "e3.raw"
    path.write_bytes(header("EVT3;height=720;width=1280", evt="3.0") + words.astype("<u2").tobytes())
    hdr = read_raw_header(path)
    assert (hdr.format, hdr.width, hdr.height, hdr.word_size) == ("EVT3", 1280, 720, 2)
    events, size = read_raw(path)
    assert size == (1280, 720) and t.max() > 2 * (1 << 24)
    for name, values in zip("txyp", (t, x, y, p)):
        np.testing.assert_array_equal(events[name], values)
    path.write_bytes(header("EVT3;height=720;width=100", evt="3.0") + words.astype("<u2").tobytes())
    with pytest.raises(EventFormatError, match=r"e3\.raw: event \d+ has x=.*outside the 100x720 sensor"):
        read_raw(path)



# --- errors ---

def test_unknown_and_missing_format(tmp_path):
    path = tmp_path / "bad.raw"
    path.write_bytes(header("EVT5;height=4;width=4"))
    with pytest.raises(EventFormatError, match=r"bad\.raw.*header line 3 '% format EVT5.*unknown RAW format 'EVT5'"):
        read_raw_header(path)
    path.write_bytes(header(None, evt="4.0"))
    with pytest.raises(EventFormatError, match=r"bad\.raw.*unknown EVT version '4.0'"):
        read_raw(path)
    path.write_bytes(header(None, geometry="4x4"))
    with pytest.raises(EventFormatError, match=r"bad\.raw.*no '% format"):
        read_raw(path)
    path.write_bytes(header("EVT2;height=4;width=4", geometry="5x4"))
    with pytest.raises(EventFormatError, match="contradicts"):
        read_raw_header(path)


def test_truncated_payload_names_byte_offset(tmp_path):
    words = encode_evt2([1, 2, 3], [0, 1, 2], [0, 0, 0], [1, 1, 0])  # 4 words
    head = header("EVT2;height=4;width=4")
    path = tmp_path / "trunc.raw"
    path.write_bytes(head + words.astype("<u4").tobytes()[:-2])
    with pytest.raises(EventFormatError, match=rf"trunc\.raw.*byte {len(head) + 12} has only 2 of 4 bytes"):
        read_raw(path)
    payload, _ = encode_evt21([1], [0], [0], [1], legacy=True)
    path.write_bytes(header("EVT21;height=4;width=4") + payload + b"\x01\x02\x03")
    with pytest.raises(EventFormatError, match=r"has only 3 of 8 bytes"):
        read_raw(path)


def test_coordinates_outside_sensor(tmp_path):
    words = encode_evt2([10, 11, 12], [1, 639, 2], [1, 5, 2], [1, 0, 1])  # TH, ev0, ev1, ev2
    head = header("EVT2;height=240;width=320")
    path = tmp_path / "oob.raw"
    path.write_bytes(head + words.astype("<u4").tobytes())
    with pytest.raises(EventFormatError, match=rf"oob\.raw: event 1 \(word at byte {len(head) + 8}\) has x=639, y=5, "
                                               r"outside the 320x240 sensor"):
        read_raw(path)
    # An explicit sensor size must agree with the header's.
    with pytest.raises(EventFormatError, match=r"oob\.raw: sensor_size=\(640, 480\) contradicts the header's 320x240"):
        read_raw(path, sensor_size=(640, 480))
    # EVT 2.1: a valid bit that pushes x past the width.
    payload, _ = encode_evt21([5, 5], [30, 33], [0, 0], [1, 1], legacy=False)  # TH, word x 0.., word x 32..
    head = header("EVT21;height=4;width=32")
    path.write_bytes(head + payload)
    with pytest.raises(EventFormatError, match=rf"event 1 \(word at byte {len(head) + 16}\) has x=33, y=0"):
        read_raw(path)


def test_no_sensor_size(tmp_path):
    words = encode_evt2([3], [4], [5], [0])
    path = tmp_path / "nosize.raw"
    path.write_bytes(header(None, evt="2.0") + words.astype("<u4").tobytes())
    assert read_raw_header(path).width is None
    with pytest.raises(EventFormatError, match=r"nosize\.raw.*pass sensor_size"):
        read_raw(path)
    ev, size = read_raw(path, sensor_size=(10, 10))
    assert size == (10, 10)
    assert_events(ev, [3], [4], [5], [0])


def test_invalid_word_type_raises():
    words = np.array([0x80000000, 0x10000000, 0x30000000], dtype=np.uint32)
    with pytest.raises(EventFormatError, match=r"src: word 2 at byte 108 has invalid type 0x3"):
        decode_evt2(words, source="src", byte_offset=100)
    words21 = np.array([0x8000000000000000, 0x5000000000000001], dtype=np.uint64)
    with pytest.raises(EventFormatError, match=r"word 1 at byte 8 has invalid type 0x5"):
        decode_evt21(words21, legacy=False, source="src")
    with pytest.raises(EventFormatError, match="uint32"):
        decode_evt2(words.astype(np.int64), source="src")


def test_small_time_high_decrease_is_not_a_loop():
    # TIME_HIGH 1000 then 990: a small step back stays as is (no +2^34); 2^28-1 then 0 is a loop.
    words = np.array([0x80000000 | 1000, 0x00000000, 0x80000000 | 990, 0x00000000,
                      0x80000000 | TH_MASK, 0x00000000, 0x80000000, 0x00400000], dtype=np.uint32)
    ev = decode_evt2(words, source="s")
    np.testing.assert_array_equal(ev["t"], [1000 * 64, 990 * 64, TH_MASK * 64, (1 << 34) + 1])
