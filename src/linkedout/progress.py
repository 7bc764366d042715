"""Progress of a long step (training, extraction), readable on a terminal and in a log.

On a terminal it is a rich live bar, as before. Anywhere else (``make demo | tee log``, CI, a
notebook's captured output) a live bar renders nothing, so a model that trains for minutes looked
dead; there it prints a plain line at a steady interval instead, plus one line at the end::

    train sasrec: epoch 3/200, step 120/310, 41 s, best valid NDCG@10 0.0612 (epoch 2)
    extract frames: 40/63 items, 2 failed, 1.9 items/s, 21 s

Lines are written on an update once ``interval`` seconds have passed since the last one (no timer
thread: nothing to synchronise, and a test can drive it with a fake clock). The interval defaults
to 30 s; set ``LINKEDOUT_PROGRESS_INTERVAL`` (seconds, 0 = every update) to change it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

DEFAULT_INTERVAL_SECONDS = 30.0
INTERVAL_ENV = "LINKEDOUT_PROGRESS_INTERVAL"


def interval_from_env() -> float:
    """Seconds between plain progress lines: ``$LINKEDOUT_PROGRESS_INTERVAL`` or 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={raw!r} is not a number of seconds") from None
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected seconds >= 0")
    return seconds


@dataclass
class ProgressState:
    """What a plain line is made from: counts so far, the caller's fields, seconds since the start."""

    total: int
    completed: int = 0
    elapsed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Completed units per second (0 before any time has passed)."""
        return self.completed / self.elapsed if self.elapsed > 0 else 0.0


def count_line(unit: str = "items") -> Callable[[ProgressState], str]:
    """The default plain line: ``40/63 items, 1.9 items/s, 21 s``."""

    def describe(s: ProgressState) -> str:
        return f"{s.completed}/{s.total} {unit}, {s.rate:.1f} {unit}/s, {s.elapsed:.0f} s"

    return describe


class StepProgress:
    """Progress of one long step; a context manager.

    ``describe`` turns the state into a plain line's text (after ``"<label>: "``); ``columns``
    builds the rich bar's columns (called only on a terminal, so rich is imported only there);
    ``fields`` are the initial values of the caller's fields, shared by both renderings (rich
    columns read them as ``{task.fields[name]}``). ``enabled=False`` prints nothing at all.
    """

    def __init__(
        self,
        label: str,
        total: int,
        *,
        enabled: bool = True,
        describe: Callable[[ProgressState], str] | None = None,
        columns: Callable[[], Sequence[Any]] | None = None,
        fields: dict[str, Any] | None = None,
        stream: TextIO | None = None,
        interval: float | None = None,
        transient: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.enabled = enabled
        self.state = ProgressState(total=total, fields=dict(fields or {}))
        self._describe = describe or count_line()
        self._stream = stream
        if interval is None:
            interval = interval_from_env() if enabled else DEFAULT_INTERVAL_SECONDS
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._bar: Any = None
        self._task: Any = None
        if not enabled:
            return
        from rich.console import Console

        # Resolved now, not at import: pytest and callers swap sys.stdout / sys.stderr at run time.
        console = Console(file=stream or sys.stdout)
        if console.is_terminal:
            from rich.progress import Progress

            self._bar = Progress(*(columns() if columns else ()), console=console, transient=transient)
            self._task = self._bar.add_task(label, total=total, **self.state.fields)

    @property
    def live(self) -> bool:
        """True when a rich bar is drawn (a terminal), False when plain lines are printed."""
        return self._bar is not None

    def __enter__(self) -> StepProgress:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, *exc)
        elif self.enabled:
            # One closing line, so a log shows where the step ended even if it was shorter than the
            # interval (or how far it got when it failed).
            self._line("stopped" if exc_type is not None else "done")

    def update(self, advance: int = 0, *, description: str | None = None, **fields: Any) -> None:
        """Add ``advance`` completed units and set fields; cheap enough to call every training step."""
        if not self.enabled:
            return
        self.state.completed += advance
        self.state.fields.update(fields)
        if self._bar is not None:
            extra = {"description": description} if description is not None else {}
            self._bar.update(self._task, advance=advance, **extra, **fields)
            return
        now = self._clock()
        if now - self._last_line >= self._interval:
            self._last_line = now
            self._line()

    def print(self, message: str, style: str | None = None) -> None:
        """A line that stays in the output (above the bar on a terminal, in ``style``), e.g. one per
        failure."""
        if not self.enabled:
            return
        if self._bar is not None:
            from rich.text import Text

            # styled Text, not print(style=...): that style would also paint the live bar below
            self._bar.console.print(Text(message, style=style or ""), highlight=False)
        else:
            self._write(message)

    def _line(self, suffix: str | None = None) -> None:
        self.state.elapsed = self._clock() - self._started
        text = f"{self.label}: {self._describe(self.state)}"
        self._write(f"{text}, {suffix}" if suffix else text)

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stdout
        stream.write(text + "\n")
        stream.flush()  # a pipe is block-buffered: without this the line shows up minutes late
