"""EVT 3.0 decoder: hand-decoded words, round trips through a spec-following encoder (24-bit wrap), chunking, errors."""

import re

import numpy as np
import pytest

from anon_jax.events import EventFormatError
from anon_jax.events.evt3 import TIME_LOOP_US, Evt3Decoder, decode_evt3

WIDTH, HEIGHT = 1280, 720


# --- a small spec-following encoder (test only) -------------------------------------------------

def _time_high(high):
    return 0x8000 | (high & 0xFFF)


def encode_evt3(t, x, y, p, *, pattern=(12, 12, 8), min_run=3):
    """Events -> (uint16 words, emission order) as a sensor would write them.

    Emits a TIME_HIGH on every change of t >> 12 (including idle ticks, so wraps are visible), a
    TIME_LOW when the low part changes (none when it is 0 right after a TIME_HIGH, relying on the
    reset), an ADDR_Y when y changes, and per (t, y, p) group either VECT_BASE_X + vector words
    following `pattern` (window of sum(pattern) pixels, used when it covers >= min_run events) or
    one ADDR_X per event. Events come out ordered by (t, y, p, x); `order` maps output to input.
    """
    t, x, y, p = (np.asarray(a, np.int64) for a in (t, x, y, p))
    order = np.lexsort((x, p, y, t))
    t, x, y, p = t[order], x[order], y[order], p[order]
    window = sum(pattern)
    words, high, low, cur_y = [], None, None, None
    i, n = 0, t.size
    while i < n:
        h = int(t[i]) >> 12
        if high is None:
            high = h
            words.append(_time_high(h))
            low = 0
        while high < h:
            high += 1
            words.append(_time_high(high))
            low = 0
        if low != int(t[i]) & 0xFFF:
            low = int(t[i]) & 0xFFF
            words.append(0x6000 | low)
        j = i
        while j < n and t[j] == t[i] and y[j] == y[i] and p[j] == p[i]:
            j += 1
        if cur_y != y[i]:
            cur_y = int(y[i])
            words.append(0x0000 | cur_y)
        xs, pol = x[i:j], int(p[i])
        k = 0
        while k < xs.size:
            base = int(xs[k])
            run = xs[k:][xs[k:] < base + window]
            if pattern and run.size >= min_run:
                words.append(0x3000 | (pol << 11) | base)
                offset = base
                for size in pattern:
                    mask = 0
                    for value in run[(run >= offset) & (run < offset + size)]:
                        mask |= 1 << int(value - offset)
                    words.append((0x4000 if size == 12 else 0x5000) | mask)
                    offset += size
                k += run.size
            else:
                words.append(0x2000 | (pol << 11) | base)
                k += 1
        i = j
    return np.array(words, np.uint16), order


def random_events(seed, n=1500, duration_us=40_000_000, runs=40):
    """Unique random events plus horizontal runs (bursts at one t, y, p) that force vector words."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, duration_us, n)
    t[: n // 5] = rng.choice(t[n // 5:], n // 5)  # bursts of equal timestamps
    x, y, p = rng.integers(0, WIDTH, n), rng.integers(0, HEIGHT, n), rng.integers(0, 2, n)
    columns = [[t], [x], [y], [p]]
    for _ in range(runs):
        length = int(rng.integers(4, 70))
        start = int(rng.integers(0, WIDTH - length))
        keep = rng.random(length) < 0.8
        xs = np.arange(start, start + length)[keep]
        for column, value in zip(columns, (rng.integers(0, duration_us), None, rng.integers(0, HEIGHT),
                                           rng.integers(0, 2))):
            column.append(xs if value is None else np.full(xs.size, value))
    t, x, y, p = (np.concatenate(c) for c in columns)
    unique = np.unique(np.stack([t, x, y, p], 1), axis=0)  # the vector encoding cannot repeat a pixel
    return unique[:, 0], unique[:, 1], unique[:, 2], unique[:, 3]


def assert_events(decoded, t, x, y, p):
    assert decoded["t"].dtype == np.int64 and decoded["x"].dtype == np.uint16
    assert decoded["y"].dtype == np.uint16 and decoded["p"].dtype == np.uint8
    for name, expected in zip("txyp", (t, x, y, p)):
        np.testing.assert_array_equal(decoded[name], np.asarray(expected), err_msg=name)


# --- hand-decoded words --------------------------------------------------------------------------

HAND_WORDS = np.array([
    0x8001,  # TIME_HIGH 1 -> t = 4096
    0x6010,  # TIME_LOW 16 -> t = 4112
    0x0005,  # ADDR_Y 5
    0x2803,  # ADDR_X p=1 x=3                  -> (4112, 3, 5, 1)
    0x300A,  # VECT_BASE_X p=0 base=10
    0x4005,  # VECT_12 0b101 at 10: x=10, 12   ; base -> 22
    0x5081,  # VECT_8 0x81 at 22: x=22, 29     ; base -> 30
    0x6020,  # TIME_LOW 32 -> t = 4128
    0x2000,  # ADDR_X p=0 x=0                  -> (4128, 0, 5, 0)
    0xA001, 0xE014, 0xF123, 0x7004, 0xD000,  # trigger, OTHERS, CONTINUED_12, CONTINUED_4, IMU: skipped
    0x4001,  # VECT_12 bit 0 at base 30        -> (4128, 30, 5, 0)
    0x0802,  # ADDR_Y 2 (bit 11 = system type, ignored)
    0x3FFE,  # VECT_BASE_X p=1 base=2046
    0x5002,  # VECT_8 bit 1 -> x=2047 p=1
], np.uint16)
HAND_EVENTS = ([4112, 4112, 4112, 4112, 4112, 4128, 4128, 4128], [3, 10, 12, 22, 29, 0, 30, 2047],
               [5, 5, 5, 5, 5, 5, 5, 2], [1, 0, 0, 0, 0, 0, 0, 1])


def test_hand_decoded_words():
    assert_events(decode_evt3(HAND_WORDS), *HAND_EVENTS)


def test_time_wrap_and_time_high_reset_low_by_hand():
    words = np.array([0x8FFF, 0x6FFF, 0x0007, 0x2001,  # t = 2**24 - 1
                      0x8000, 0x2002,                  # wrap: one loop, low reset -> t = 2**24
                      0x6003, 0x2003,                  # t = 2**24 + 3
                      0x8005, 0x8004, 0x2004],         # a TIME_HIGH falling by 1 (< 2048) is no loop
                     np.uint16)
    assert_events(decode_evt3(words), [2**24 - 1, 2**24, 2**24 + 3, 2**24 + (4 << 12)],
                  [1, 2, 3, 4], [7, 7, 7, 7], [0, 0, 0, 0])


def test_time_low_before_first_time_high_is_ignored_and_empty_input():
    assert_events(decode_evt3(np.array([0x6ABC, 0x8002, 0x0001, 0x2001], np.uint16)), [8192], [1], [1], [0])
    assert_events(decode_evt3(np.zeros(0, np.uint16)), [], [], [], [])
    assert_events(decode_evt3(np.array([0x8002, 0x6001, 0xE000], np.uint16)), [], [], [], [])


# --- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_across_two_time_wraps(seed):
    t, x, y, p = random_events(seed)
    assert t.max() > 2 * TIME_LOOP_US  # crosses the 16.777216 s wrap twice
    words, order = encode_evt3(t, x, y, p)
    assert np.isin(words >> 12, [3, 4, 5]).any() and (words >> 12 == 2).any()  # vectors and singles
    assert_events(decode_evt3(words), t[order], x[order], y[order], p[order])


@pytest.mark.parametrize("pattern", [(12, 12, 12, 8), (8,), (12,), ()])
def test_round_trip_non_canonical_vectors_and_addr_x_only(pattern):
    t, x, y, p = random_events(5, n=400, duration_us=3_000_000)
    words, order = encode_evt3(t, x, y, p, pattern=pattern, min_run=1)
    assert_events(decode_evt3(words), t[order], x[order], y[order], p[order])


def test_times_are_monotonic_across_wraps():
    t, x, y, p = random_events(3, n=800)
    decoded = decode_evt3(encode_evt3(t, x, y, p)[0])
    assert np.all(np.diff(decoded["t"]) >= 0) and decoded["t"][-1] == t.max()


# --- chunked decoding -----------------------------------------------------------------------------

def test_chunked_decoder_equals_one_shot_on_random_splits():
    t, x, y, p = random_events(7, n=1000)
    words, _ = encode_evt3(t, x, y, p)
    whole = decode_evt3(words)
    rng = np.random.default_rng(11)
    for trial in range(25):
        count = int(rng.integers(1, 60)) if trial else 1
        cuts = np.sort(rng.integers(0, words.size + 1, count))
        if trial % 5 == 0:  # include empty and one-word chunks
            cuts = np.sort(np.concatenate([cuts, cuts[:3], cuts[:3] + 1]).clip(0, words.size))
        decoder = Evt3Decoder()
        parts = [decoder.decode(chunk) for chunk in np.split(words, cuts)]
        assert decoder.words_seen == words.size
        for name in "txyp":
            np.testing.assert_array_equal(np.concatenate([part[name] for part in parts]), whole[name])


def test_chunked_decoder_carries_vector_base_and_y_across_every_boundary():
    decoder = Evt3Decoder()
    parts = [decoder.decode(HAND_WORDS[i:i + 1]) for i in range(HAND_WORDS.size)]
    merged = [np.concatenate([part[name] for part in parts]) for name in "txyp"]
    assert_events(dict(zip("txyp", merged)), *HAND_EVENTS)


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("words, index, problem", [
    ([0x8000, 0x0001, 0x1000], 2, "undefined EVT 3.0 word type 0x1"),
    ([0x8000, 0x0001, 0x2001, 0xC123], 3, "undefined EVT 3.0 word type 0xC"),
    ([0x0001, 0x6005, 0x2001], 2, "before the first TIME_HIGH"),
    ([0x8000, 0x2001], 1, "before the first EVT_ADDR_Y"),
    ([0x8000, 0x0001, 0x2001, 0x5001], 3, "before the first VECT_BASE_X"),
    ([0x8000, 0x0001, 0x37FF, 0x4003], 3, "x=2048 is outside the 11-bit"),
])
def test_invalid_words_name_source_offset_and_problem(words, index, problem):
    message = f"rec.raw: byte offset {100 + 2 * index} "
    with pytest.raises(EventFormatError, match=re.escape(message) + ".*" + re.escape(problem)):
        decode_evt3(np.array(words, np.uint16), source="rec.raw", byte_offset=100)


def test_wrong_input_arrays_raise():
    assert issubclass(EventFormatError, ValueError)
    for bad, text in ((np.array([0x8000], np.int32), "uint16"), (np.zeros(2, np.float32), "uint16"),
                      (np.zeros((2, 2), np.uint16), "1-D")):
        with pytest.raises(EventFormatError, match=r"^cam\.raw: .*" + text):
            decode_evt3(bad, source="cam.raw")
    with pytest.raises(EventFormatError, match="uint16"):
        Evt3Decoder().decode(np.zeros(3, np.int64))


def test_chunked_error_reports_absolute_offset_and_keeps_state():
    decoder = Evt3Decoder(source="cam.raw", byte_offset=40)
    decoder.decode(HAND_WORDS[:5])  # ends after VECT_BASE_X
    with pytest.raises(EventFormatError, match=r"cam\.raw: byte offset 52 "):
        decoder.decode(np.array([0x4001, 0x9000], np.uint16))
    assert decoder.words_seen == 5  # the failed chunk was not consumed
    rest = decoder.decode(HAND_WORDS[5:])
    assert_events(rest, *(column[1:] for column in HAND_EVENTS))
