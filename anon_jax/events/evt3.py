"""Vectorised decoder for the payload of Prophesee RAW EVT 3.0 files (16-bit words, after the `%` header).

Word types (bits 15-12; payload in bits 11-0):

====  ============  ==========================================================================
0x0   EVT_ADDR_Y    bits 10-0 set the current y (bit 11 is the master/slave flag, ignored)
0x2   EVT_ADDR_X    bit 11 polarity, bits 10-0 x: emits one event at (x, current y, current t)
0x3   VECT_BASE_X   bit 11 polarity, bits 10-0 x: sets the vector base x and vector polarity
0x4   VECT_12       12-bit mask: an event at base + i per set bit i, then base += 12
0x5   VECT_8        8-bit mask (bits 7-0): an event at base + i per set bit i, then base += 8
0x6   TIME_LOW      t[11:0]
0x8   TIME_HIGH     t[23:12]
0x7, 0xA, 0xD, 0xE, 0xF   CONTINUED_4, EXT_TRIGGER, IMU, OTHERS, CONTINUED_12: skipped
0x1, 0x9, 0xB, 0xC        not defined by the format: EventFormatError
====  ============  ==========================================================================

Choices where the format leaves room (all documented in the tests):

- Time. A TIME_HIGH sets t = loops * 2**24 + (high << 12) and resets the low part to 0; a TIME_LOW
  then sets the low 12 bits. The 24-bit time wraps every 16.777216 s: like OpenEB, a loop is counted
  when a TIME_HIGH is smaller than the previous one by at least 2048 (half the 12-bit range), so
  times stay monotonic across wraps. Sensors emit a TIME_HIGH on every change of the high part, so a
  real gap cannot hide a wrap; a stream that skips more than half the range cannot be decoded exactly.
  A smaller backwards TIME_HIGH is kept as is (no loop, no error).
- Undecodable events raise instead of being dropped silently: an event word (ADDR_X, VECT_12,
  VECT_8) before the first TIME_HIGH (its time is unknown), before the first ADDR_Y (y unknown), or a
  vector word before the first VECT_BASE_X (x unknown). A TIME_LOW before the first TIME_HIGH is
  harmless and ignored (the next TIME_HIGH resets the low part anyway).
- Vectors are decoded generically: any sequence of VECT_12 / VECT_8 after a VECT_BASE_X is expanded
  and advances the base, not only the canonical 12-12-8 triple (OpenEB drops other sequences).
  A vector event whose x leaves the 11-bit address range (x > 2047) raises.
- Triggers, IMU and vendor words are skipped; the output holds CD events only.

Everything is NumPy, with no loop over words: decoder state (time base, time low, y, vector base,
polarity) is forward-filled by a running count of the words that set it (the count indexes the
values set so far) and gathered only at event words. Each chunk starts from the state the previous
chunk left (`Evt3Decoder`), so decoding in windows equals decoding at once.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from anon_jax.events.stream import EventFormatError

TIME_LOOP_US = 1 << 24  # the 24-bit time wraps every 16.777216 s
_LOOP_THRESHOLD = 2048  # a TIME_HIGH smaller than the previous by this much counts one loop
_MAX_X = 2047  # 11-bit addresses
_UNDEFINED = np.isin(np.arange(16), (0x1, 0x9, 0xB, 0xC))  # lookup by word type
_BITS = np.arange(12, dtype=np.int64)
_POPCOUNT = np.array([bin(value).count("1") for value in range(1 << 12)], np.int64)  # set bits of a 12-bit mask
_STEP = np.zeros(16, np.int64)  # how far a word moves the vector base: VECT_12 by 12, VECT_8 by 8
_STEP[0x4], _STEP[0x5] = 12, 8


@dataclasses.dataclass
class _State:
    """What the decoder knows after the words seen so far (-1 = not seen yet)."""

    time_base: int = -1  # loops * 2**24 + (high << 12) of the last TIME_HIGH
    time_low: int = 0  # low 12 bits since that TIME_HIGH
    last_high: int = -1  # the raw 12-bit value of the last TIME_HIGH, for loop detection
    loops: int = 0
    y: int = -1
    vect_base: int = -1  # the base x the next vector word uses
    vect_polarity: int = 0


def _empty() -> dict:
    return {"t": np.zeros(0, np.int64), "x": np.zeros(0, np.uint16),
            "y": np.zeros(0, np.uint16), "p": np.zeros(0, np.uint8)}


def _ranks(mask: np.ndarray, at: np.ndarray) -> np.ndarray:
    """At positions `at`: how many words up to and including each position set the state (`mask`).

    Indexing [initial, value of the 1st setting word, 2nd, ...] with the rank forward-fills the state without a
    loop (see `_fill`); one rank serves every state the same word type sets.
    """
    return np.cumsum(mask, dtype=np.int64)[at]


def _fill(rank: np.ndarray, values: np.ndarray, initial: int) -> np.ndarray:
    return np.concatenate((np.array([initial], np.int64), values.astype(np.int64)))[rank]


def _as_words(words, source: str) -> np.ndarray:
    array = np.asarray(words)
    if array.dtype.kind != "u" or array.dtype.itemsize != 2:
        raise EventFormatError(
            f"{source}: EVT 3.0 words must be a uint16 array, got dtype {array.dtype}; read the payload "
            "with np.frombuffer(data, '<u2') (EVT 3.0 files are little-endian).")
    if array.ndim != 1:
        raise EventFormatError(f"{source}: EVT 3.0 words must be 1-D, got shape {array.shape}.")
    return array.astype(np.uint16, copy=False)


def _fail(source: str, byte_offset: int, index: int, word: int, problem: str):
    raise EventFormatError(
        f"{source}: byte offset {byte_offset + 2 * int(index)} (word 0x{int(word):04X}): {problem}.")


def _decode(words: np.ndarray, state: _State, source: str, byte_offset: int) -> tuple[dict, _State]:
    """Decode one chunk from `state`; returns the events and the state after the chunk (input untouched)."""
    n = words.size
    if n == 0:
        return _empty(), dataclasses.replace(state)
    kind = words >> 12
    payload = (words & 0x0FFF).astype(np.int64)

    bad = np.flatnonzero(_UNDEFINED[kind])
    if bad.size:
        i = bad[0]
        _fail(source, byte_offset, i, words[i], f"undefined EVT 3.0 word type 0x{int(kind[i]):X} "
              "(is the file EVT 3.0, and is the header fully skipped?)")

    # Decoder state is needed only at event words and at the last word (to carry it on).
    is_addr_x = kind == 0x2
    is_v12 = kind == 0x4
    is_v8 = kind == 0x5
    is_vector = is_v12 | is_v8
    emitting = np.flatnonzero(is_addr_x | is_vector)
    at = np.append(emitting, n - 1)

    # Time: a loop is counted when TIME_HIGH falls by >= 2048 against the previous TIME_HIGH.
    is_high = kind == 0x8
    highs = payload[is_high]
    previous = np.concatenate(([state.last_high], highs))[:-1]
    wrapped = (previous >= 0) & (previous - highs >= _LOOP_THRESHOLD)
    loops = state.loops + np.cumsum(wrapped)
    time_base = _fill(_ranks(is_high, at), loops * TIME_LOOP_US + (highs << 12), state.time_base)
    is_low = kind == 0x6
    # TIME_HIGH resets the low part, so both word types feed the same forward fill.
    is_time = is_low | is_high
    time_low = _fill(_ranks(is_time, at), np.where(is_low[is_time], payload[is_time], 0), state.time_low)

    is_y = kind == 0x0
    y = _fill(_ranks(is_y, at), payload[is_y] & 0x7FF, state.y)

    # Vector base at word i = last VECT_BASE_X value + steps of the vector words in between. Vector words are
    # few, so the steps before a word are found by searching their positions rather than summing every word.
    is_base = kind == 0x3
    base_at = np.flatnonzero(is_base)
    vector_at = np.flatnonzero(is_vector)
    steps = np.concatenate(([0], np.cumsum(np.where(is_v12[vector_at], 12, 8))))

    def steps_before(positions):
        return steps[np.searchsorted(vector_at, positions, side="left")]

    known = state.vect_base >= 0
    base_rank = _ranks(is_base, at)
    vect_base = _fill(base_rank, (payload[base_at] & 0x7FF) - steps_before(base_at),
                      state.vect_base if known else 0) + steps_before(at)
    known_base = _fill(base_rank, np.ones(base_at.size, np.int64), int(known)) == 1
    vect_polarity = _fill(base_rank, payload[base_at] >> 11, state.vect_polarity)

    m = emitting.size
    if m:
        for problem, missing in (("event before the first TIME_HIGH word: its time is unknown", time_base[:m] < 0),
                                 ("event before the first EVT_ADDR_Y word: its y is unknown", y[:m] < 0),
                                 ("vector word before the first VECT_BASE_X word: its x is unknown",
                                  is_vector[emitting] & ~known_base[:m])):
            hits = emitting[missing]
            if hits.size:
                _fail(source, byte_offset, hits[0], words[hits[0]], problem)

    # ADDR_X is a one-bit vector at its own x and polarity, so one expansion keeps file order. Only vector
    # words need their bits found; an ADDR_X word is one event at bit 0.
    single = is_addr_x[emitting]
    word = payload[emitting]
    base = np.where(single, word & 0x7FF, vect_base[:m])
    polarity = np.where(single, word >> 11, vect_polarity[:m])
    vectors = np.flatnonzero(~single)
    if vectors.size:
        masks = np.where(is_v8[emitting[vectors]], word[vectors] & 0xFF, word[vectors])
        counts = np.ones(m, np.int64)
        counts[vectors] = _POPCOUNT[masks]
        rows = np.repeat(np.arange(m), counts)
        vector_rows, vector_bits = np.nonzero((masks[:, None] >> _BITS) & 1)
        first_out = np.cumsum(counts) - counts  # output index of each emitting word's first event
        within = np.arange(vector_rows.size) - np.searchsorted(vector_rows, vector_rows, side="left")
        bits = np.zeros(rows.size, np.int64)
        bits[first_out[vectors[vector_rows]] + within] = vector_bits
    else:
        rows, bits = np.arange(m), 0
    x = base[rows] + bits
    if x.size and x.max() > _MAX_X:
        first = int(np.argmax(x > _MAX_X))
        i = emitting[rows[first]]
        _fail(source, byte_offset, i, words[i], f"vector event at x={int(x[first])} is outside the 11-bit "
              "address range (a VECT_BASE_X is missing or the stream is corrupt)")
    events = {"t": (time_base + time_low)[rows], "x": x.astype(np.uint16), "y": y[rows].astype(np.uint16),
              "p": polarity[rows].astype(np.uint8)}

    after = _State(time_base=int(time_base[-1]), time_low=int(time_low[-1]),
                   last_high=int(highs[-1]) if highs.size else state.last_high,
                   loops=int(loops[-1]) if loops.size else state.loops, y=int(y[-1]),
                   vect_base=int(vect_base[-1] + _STEP[kind[-1]]) if known_base[-1] else -1,
                   vect_polarity=int(vect_polarity[-1]))
    return events, after


def decode_evt3(words: np.ndarray, *, source: str = "EVT 3.0 data", byte_offset: int = 0) -> dict:
    """Decode EVT 3.0 words at once: {"t": int64 µs, "x": uint16, "y": uint16, "p": uint8} in file order.

    `source` and `byte_offset` (of the first word in the file) only shape error messages.
    Raises EventFormatError for undefined word types and undecodable events (see the module doc).
    """
    events, _ = _decode(_as_words(words, source), _State(), source, byte_offset)
    return events


class Evt3Decoder:
    """Streaming EVT 3.0 decoder: feed consecutive chunks of words; state carries across chunks.

    Concatenating the outputs of `decode` over any split of the words equals `decode_evt3` on all of
    them. Errors report absolute byte offsets (`byte_offset` is that of the first word fed). A chunk
    that raises leaves the decoder state unchanged.
    """

    def __init__(self, *, source: str = "EVT 3.0 data", byte_offset: int = 0):
        self.source = source
        self.start_offset = int(byte_offset)
        self.words_seen = 0
        self._state = _State()

    def decode(self, words: np.ndarray) -> dict:
        """Decode the next chunk; returns its events (possibly empty) as in `decode_evt3`."""
        array = _as_words(words, self.source)
        offset = self.start_offset + 2 * self.words_seen
        events, self._state = _decode(array, self._state, self.source, offset)
        self.words_seen += array.size
        return events
