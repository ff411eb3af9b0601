"""One Lua script call for many requests: the work of one reactor turn, batched.

A :class:`ScriptBatch` collects the requests (each a few string arguments)
that arrive while the reactor handles one round of ready connections, and
sends them to Redis as one ``EVALSHA`` when the turn is over
(``callLater(0)``), or earlier once ``max_items`` or ``max_octets`` are
reached.  A hundred clients posting in the same turn then cost one command,
one reply and one Deferred chain instead of a hundred.

The script runs every item in ``pcall`` and answers one bulk string, one
line per item, in order: the item's answer, or ``!`` and the error of that
item alone.  Each request's Deferred fires with its own line, so:

- an item Redis refused fails only that request (:class:`BatchFailed`);
- a call that fails as a whole (no connection, connection lost, a reply
  that does not match the batch) fails every request of that batch, and
  no other, and is logged once;
- nothing fires before Redis has answered, so a caller that acknowledges
  on success acknowledges only what is stored.

Items run in the order they were added, and batches are sent in order on
one connection, so requests keep their order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import ConnectionError as RedisConnectionError

from cryptify.crs.redis.store import RedisNotConnected

if TYPE_CHECKING:
    from txredisapi import RedisProtocol

log = Logger(namespace="cryptify.crs.redis")

#: Requests per script call at most (a script blocks Redis while it runs).
MAX_ITEMS = 128
#: Argument octets per script call at most.
MAX_OCTETS = 1 << 20

#: Lua run around each item's function ``item(f)``: ``f`` holds the item's
#: fields (its one argument split at NUL octets); the script's header
#: defines ``item``, ``HEADER`` (arguments before the items) and ``STRIDE``
#: (fields per item).  One argument per item, not one per field: txredisapi
#: spends about a microsecond and a half of Python on each argument it
#: writes, and Redis parses fewer of them.
LOOP = """
local out = {}
for a = HEADER + 1, #ARGV do
  local s, f, start = ARGV[a], {}, 1
  while true do
    local stop = string.find(s, '\\0', start, true)
    if not stop then
      f[#f + 1] = string.sub(s, start)
      break
    end
    f[#f + 1] = string.sub(s, start, stop - 1)
    start = stop + 1
  end
  local ok, res
  if #f == STRIDE then
    ok, res = pcall(item, f)
  else
    ok, res = false, 'item has ' .. #f .. ' fields, not ' .. STRIDE
  end
  if not ok then
    if type(res) == 'table' then res = res.err or 'error' end
    res = '!' .. (string.gsub(tostring(res), '[\\r\\n]', ' '))
  end
  out[#out + 1] = res
end
return table.concat(out, '\\n')
"""


#: Redis error replies that say "not now" rather than "never" (a restarted
#: server loading its data, a busy script, a replica without its master).
TRANSIENT_REPLIES = ("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN")


class BatchFailed(Exception):
    """Redis did not do this request (its item failed, or the whole call).

    ``transient``: Redis could not be reached or answered "not now"; the
    same request may well succeed in a moment.
    """

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient


def transient(failure: Failure) -> bool:
    """Whether a failed Redis call failed for want of a usable connection."""
    if failure.check(
        RedisNotConnected,
        RedisConnectionError,
        error.ConnectionLost,
        error.ConnectionDone,
        error.ConnectionClosed,
        error.ConnectError,
        error.TimeoutError,
    ):
        return True
    return failure.getErrorMessage().startswith(TRANSIENT_REPLIES)


class ScriptBatch:
    """Batch requests for one Lua script (see the module docstring).

    ``script``: defines ``item(f)``, ``HEADER`` and ``STRIDE`` (:data:`LOOP`
    is appended); ``client``: the live txredisapi connection (may raise);
    ``header``: the arguments before the items, per call; ``scheduler``:
    runs the flush at the end of the turn.
    """

    def __init__(
        self,
        name: str,
        script: str,
        stride: int,
        client: Callable[[], RedisProtocol],
        scheduler: Callable[[], IReactorTime],
        header: Callable[[], Sequence[str]] = tuple,
        max_items: int = MAX_ITEMS,
        max_octets: int = MAX_OCTETS,
    ) -> None:
        self.name = name
        self.script = script + LOOP
        self.stride = stride
        self.client = client
        self.scheduler = scheduler
        self.header = header
        self.max_items = max_items
        self.max_octets = max_octets
        self._pending: list[tuple[str, Deferred[str]]] = []
        self._octets = 0
        self._call: IDelayedCall | None = None
        #: Script calls made, and requests sent in them.
        self.calls = 0
        self.items = 0

    def add(self, args: Sequence[str]) -> Deferred[str]:
        """Queue one request; fires with its answer line or fails with BatchFailed.

        The fields travel as one argument joined by NUL octets, so a field
        may not hold one: such a request fails alone, at once.
        """
        if len(args) != self.stride:
            raise ValueError(f"{self.name}: {len(args)} arguments, not {self.stride}")
        packed = "\0".join(args)
        if packed.count("\0") != self.stride - 1:
            return fail(BatchFailed(f"{self.name}: a field holds a NUL octet"))
        answer: Deferred[str] = Deferred()
        self._pending.append((packed, answer))
        self._octets += len(packed)
        if len(self._pending) >= self.max_items or self._octets >= self.max_octets:
            self.flush()
        elif self._call is None:
            self._call = self.scheduler().callLater(0, self.flush)
        return answer

    @property
    def pending(self) -> int:
        """Requests queued and not sent yet."""
        return len(self._pending)

    def flush(self) -> None:
        """Send what is queued now (one script call)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        items, self._pending, self._octets = self._pending, [], 0
        if not items:
            return
        self.calls += 1
        self.items += len(items)
        try:
            argv = [*self.header(), *(packed for packed, _ in items)]
            sent: Deferred[object] = self.client().eval(self.script, [], argv)
        except Exception:
            self._failed(Failure(), items)
            return
        sent.addCallbacks(self._answered, self._failed, callbackArgs=(items,), errbackArgs=(items,))

    def _answered(self, reply: object, items: list[tuple[str, Deferred[str]]]) -> None:
        lines = ("" if reply is None else str(reply)).split("\n")
        if len(lines) != len(items):
            why = f"{len(lines)} answers to {len(items)} requests"
            self._failed(Failure(BatchFailed(why)), items)
            return
        for (_, answer), line in zip(items, lines, strict=True):
            if line.startswith("!"):
                why = line[1:]
                answer.errback(
                    BatchFailed(f"{self.name}: {why}", why.startswith(TRANSIENT_REPLIES))
                )
            else:
                answer.callback(line)

    def _failed(self, failure: Failure, items: list[tuple[str, Deferred[str]]]) -> None:
        why = failure.getErrorMessage()
        passing = transient(failure)
        log.warn(
            "{name}: {count} requests not done: {why}",
            name=self.name,
            count=len(items),
            why=why,
        )
        for _, answer in items:
            answer.errback(BatchFailed(f"{self.name}: {why}", passing))
