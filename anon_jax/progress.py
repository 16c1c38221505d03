"""A text progress bar for the command-line tools: items done (windows, images), rate and ETA on stderr."""

import sys
import time


class ProgressBar:
    """Items done, rate and ETA on stderr: one redrawn bar on a terminal, a line every few seconds in logs.

    `unit` names the items in the text ("windows", "images").
    """

    def __init__(self, total: int, *, label: str = "anonymize", every_s: float = 5.0, width: int = 30, stream=None,
                 unit: str = "windows"):
        self.total, self.label, self.every_s, self.width, self.unit = total, label, every_s, width, unit
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty()
        self.started = self.printed = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        finished = done >= self.total
        if not (self.interactive or finished or now - self.printed >= self.every_s):
            return
        self.printed = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        filled = self.width * done // max(self.total, 1)
        text = (f"{self.label}: [{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} {self.unit}, "
                f"{rate:.1f} {self.unit}/s, ETA {eta:.0f}s")
        if self.interactive:
            print("\r" + text, end="\n" if finished else "", file=self.stream, flush=True)
        else:
            print(text, file=self.stream, flush=True)
