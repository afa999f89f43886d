"""Replayed captures and given events: the stand-in's simple sources.

:class:`ReplaySource` serves the events of raw captures in file order
(out-of-order ``Event-Sequence`` included).  Every event is compiled once into
a template with ids and times as slots; repetition 0 is the capture as
recorded (optionally moved to ``time_base``), repetition *r* maps every UUID
to a fresh deterministic one and moves every time and ``Event-Sequence`` *r*
capture-lengths later, so one capture gives many distinct calls.

:class:`StaticSource` sends decoded event dicts as given (any iterable, even
one that blocks: tests feed events one by one through it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Union

from ..esl.events import Event
from .capture import read_capture
from .slots import find_ids, find_times
from .templates import Context, Emission, compile_template

class ReplaySource:
    """The events of raw captures, in their exact order, ``repeat`` times.

    Repetition 0 is the capture as recorded (ids and times unchanged, unless
    ``time_base`` moves the first event to that Unix time).  Repetition *r*
    maps every UUID to a fresh one derived from (*r*, old UUID), and moves
    every time and ``Event-Sequence`` *r* capture-lengths later.
    """

    def __init__(
        self,
        captures: Iterable[Union[str, Path, bytes]],
        repeat: int = 1,
        time_base: float | None = None,
    ):
        if repeat < 1:
            raise ValueError("repeat must be at least 1")
        finders = (find_ids, find_times)
        self._templates = [
            compile_template(pairs, body, finders)
            for capture in captures
            for pairs, body in read_capture(capture)
        ]
        if not self._templates:
            raise ValueError("the captures hold no events")
        self.repeat = repeat
        first = self._templates[0]
        self.core_uuid = first.original("Core-UUID")
        self.hostname = first.original("FreeSWITCH-Hostname")
        times = [t.ts for t in self._templates if t.ts] or [0]
        seqs = [t.seq for t in self._templates if t.seq] or [0]
        # Whole seconds, so epoch seconds and date strings move in step.
        self.period_us = ((max(times) - min(times)) // 1_000_000 + 2) * 1_000_000
        self.seq_span = max(seqs) - min(seqs) + 1
        self.base_us = 0
        if time_base is not None:
            self.base_us = (int(time_base) - min(times) // 1_000_000) * 1_000_000

    def __len__(self) -> int:
        return len(self._templates) * self.repeat

    def __iter__(self) -> Iterator[Emission]:
        for rep in range(self.repeat):
            ctx = Context(
                key=None if rep == 0 else "replay:%d" % rep,
                shift_us=self.base_us + rep * self.period_us,
            )
            for template in self._templates:
                yield Emission(template, ctx, template.seq + rep * self.seq_span)


class StaticSource:
    """Decoded event dicts, sent as given (any iterable, even one that blocks)."""

    core_uuid = None
    hostname = None

    def __init__(self, events: Iterable[Event]):
        self._events = events

    def __iter__(self) -> Iterator[Emission]:
        ctx = Context()
        for event in self._events:
            body = event.get("_body")
            # decode_event keeps a body's inner Content-Length: encoding redoes it.
            skip = ("_body", "Content-Length") if body is not None else ("_body",)
            pairs = tuple((k, v) for k, v in event.items() if k not in skip)
            yield Emission(compile_template(pairs, body, ()), ctx, 0)
