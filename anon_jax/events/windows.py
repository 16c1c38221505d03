"""Non-overlapping event windows for window-by-window reconstruction, with the semantics of E2VID's readers.

Both yield EventStreams on the parent stream's sensor; times stay in the stream's own unit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from anon_jax.events.stream import EventFormatError, EventStream


def _window(stream: EventStream, start: int, stop: int) -> EventStream:
    return EventStream(x=stream.x[start:stop], y=stream.y[start:stop], t=stream.t[start:stop], p=stream.p[start:stop],
                       height=stream.height, width=stream.width, source=stream.source)


def fixed_count_windows(stream: EventStream, num_events: int) -> Iterator[EventStream]:
    """Consecutive windows of `num_events` events; the last one holds the remainder (E2VID's chunked reader)."""
    if isinstance(num_events, bool) or not isinstance(num_events, (int, np.integer)) or num_events < 1:
        raise EventFormatError(f"fixed_count_windows: num_events must be a positive integer, got {num_events!r}.")
    for start in range(0, len(stream), int(num_events)):
        yield _window(stream, start, start + int(num_events))


def fixed_duration_window_bounds(t: np.ndarray, duration: float) -> list[tuple[int, int]]:
    """(start, stop) event indices of E2VID's fixed-duration windows over sorted timestamps `t`.

    The reference stamp starts at the first event; a window closes at the first event with
    t > stamp + duration, which belongs to the window and becomes the next stamp. Events after the last
    closing event never close a window and are dropped, as in E2VID.
    """
    bounds, start, stamp = [], 0, None
    while start < len(t):
        if stamp is None:
            stamp = t[start]
        # First index at or after `start` whose time exceeds the stamp by more than the duration.
        close = start + int(np.searchsorted(t[start:], stamp + duration, side="right"))
        if close >= len(t):
            break
        bounds.append((start, close + 1))
        stamp = t[close]
        start = close + 1
    return bounds


def fixed_duration_windows(stream: EventStream, duration: float) -> Iterator[EventStream]:
    """Windows of E2VID's FixedDurationEventReader; `duration` is in the stream's time unit.

    See `fixed_duration_window_bounds`: each window ends with the first event later than the previous window's
    closing event plus `duration` (the first window starts from the first event), and an unfinished tail is dropped.
    """
    if isinstance(duration, bool) or not np.isfinite(duration) or duration < 0:
        raise EventFormatError(
            f"fixed_duration_windows: duration must be a finite non-negative number, got {duration!r}.")
    for start, stop in fixed_duration_window_bounds(stream.t, float(duration)):
        yield _window(stream, start, stop)
