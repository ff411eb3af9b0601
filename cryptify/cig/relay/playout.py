"""The PBX -> secure direction's playout buffer (:class:`Playout`): PBX
audio ordered by timestamp, gaps and underruns filled with silence, late
packets dropped, jumps resynchronised; one 20 ms frame taken per tick.
"""

from __future__ import annotations

import attrs

from cryptify.cig.relay.bridge_spec import (
    FRAME_SAMPLES,
    HALF32,
    PLAYOUT_DELAY,
    PLAYOUT_MAX_AHEAD,
    PLAYOUT_MAX_PACKETS,
    U32,
)


@attrs.define
class Playout:
    """A playout buffer over RTP timestamps, pulled one frame per tick.

    Frames (already in the output codec) are kept by unwrapped timestamp.
    :meth:`pull` returns the next ``n`` samples: gaps are filled with
    ``silence``; when nothing at all has arrived for the window and
    nothing newer is buffered, the cursor holds (the sender is late, not
    lost) and :meth:`pull` returns None.
    """

    silence: int
    delay: int = PLAYOUT_DELAY
    max_ahead: int = PLAYOUT_MAX_AHEAD
    frames: dict[int, bytes] = attrs.field(factory=dict)
    cursor: int | None = None
    newest_end: int = 0
    last_ts: int = 0
    late: int = 0
    concealed: int = 0
    underruns: int = 0
    resyncs: int = 0
    started: bool = False

    def _unwrap(self, timestamp: int) -> int:
        if self.cursor is None:
            self.last_ts = timestamp
            return timestamp
        delta = (timestamp - self.last_ts) % U32
        if delta >= HALF32:
            delta -= U32
        extended: int = self.last_ts + delta
        if delta > 0:
            self.last_ts = extended
        return extended

    def restart(self) -> None:
        """A new stream (another SSRC): forget the old timeline, keep the counts."""
        self.frames = {}
        self.cursor = None
        self.newest_end = 0
        self.last_ts = 0
        self.resyncs += 1

    def push(self, timestamp: int, frame: bytes) -> None:
        """Take one frame that starts at RTP ``timestamp``."""
        if not frame:
            return
        at = self._unwrap(timestamp)
        end = at + len(frame)
        if self.cursor is None:
            self.cursor = at - self.delay
        elif at - self.cursor > self.max_ahead:
            self.cursor = at - self.delay
            self.resyncs += 1
            self.frames = {t: f for t, f in self.frames.items() if t + len(f) > self.cursor}
        elif end <= self.cursor:
            self.late += 1
            return
        if len(self.frames) >= PLAYOUT_MAX_PACKETS:
            del self.frames[min(self.frames)]
        self.frames[at] = frame
        self.newest_end = max(self.newest_end, end)

    def pull(self, n: int = FRAME_SAMPLES) -> bytes | None:
        """The next ``n`` samples, or None (no audio yet, or an underrun)."""
        cursor = self.cursor
        if cursor is None:
            return None
        frame = self.frames.pop(cursor, None)
        if frame is not None and len(frame) == n:
            self.cursor = cursor + n
            self.started = True
            return frame
        if frame is not None:
            self.frames[cursor] = frame
        stop = cursor + n
        wanted = sorted(t for t, f in self.frames.items() if t < stop and t + len(f) > cursor)
        if not wanted:
            if self.newest_end <= cursor:
                self.underruns += 1
                return None
            self.concealed += self.started
            self.cursor = stop
            self._forget(stop)
            return bytes([self.silence]) * n
        out = bytearray([self.silence]) * n
        covered = 0
        for t in wanted:
            f = self.frames[t]
            lo, hi = max(t, cursor), min(t + len(f), stop)
            out[lo - cursor : hi - cursor] = f[lo - t : hi - t]
            covered += hi - lo
        if covered < n and self.started:
            self.concealed += 1
        self.started = True
        self.cursor = stop
        self._forget(stop)
        return bytes(out)

    def _forget(self, before: int) -> None:
        """Drop what lies before ``before``; keep the rest of split frames."""
        for t in [t for t in self.frames if t < before]:
            f = self.frames.pop(t)
            if t + len(f) > before:
                self.frames[before] = f[before - t :]
