"""The notices an instance's processes send each other on Redis pub/sub.

With ``workers N`` (N > 1) every worker subscribes to one channel of
``redis_high`` (:func:`channel`); a message travels through the durable
store in ``redis_low`` as before, and only a short notice goes on the
channel.  One notice is one line of text:

- ``m URI``: a message was stored for ``URI``; the worker where ``URI``
  is attached sends what waits for it (a wake-up, no content).
- ``n URI DATA``: the same with the stored message itself (its fields in
  CBOR, base64), which that worker sends at once without reading the
  store; a message too large for a notice goes as ``m``.
- ``N URI DATA``, ``M URI ACCOUNT``: the same from the parent (a message
  from a pool member or an inter-working peer), to the home worker of
  ``URI``'s slot, which asks for the push wake-up of ``ACCOUNT`` (the
  stored message's, for ``N``) when ``URI`` is attached nowhere.
- ``d URI MESSAGE-ID``: ``URI``'s message was delivered; the worker where
  ``URI`` is attached tells it ``delivered``.

  A worker sends ``m``, ``n`` and ``d`` on one worker's channel
  (:func:`worker_channel`: the one ``URI`` is attached to, else the home
  worker of its slot, :meth:`cryptify.crs.workers.calls.WorkerLink.route`),
  which passes them on to every worker on the instance's channel when
  ``URI`` is attached elsewhere; the parent sends them on the instance's.
- ``a``: the accounts changed (``create account``, ``apply`` ...); every
  worker reads the accounts directory again.
- ``at URI W MS`` / ``dt URI W``: ``URI`` attached to (at ``MS``, ms
  since the epoch) / detached from worker ``W`` (``w1`` ...); every
  worker keeps who is where (:class:`cryptify.crs.workers.calls.AttachDirectory`)
  to find a callee, and closes its own older attachment of ``URI``.
- ``hi W``: worker ``W`` subscribed (it started): the others tell it
  whom they have attached (``at``), and forget what ``W`` had.
- ``ask W``: worker ``W`` subscribed again (its connection to
  ``redis_high`` was lost for a while): the others tell it whom they
  have attached, and it tells them whom it has.
- ``gone W``: worker ``W`` exited (sent by the parent): its calls end.
- ``c W TYPE DATA`` on worker ``V``'s own channel (:func:`worker_channel`):
  a call frame (``call-invite`` ..., :mod:`cryptify.crs.pool.calls_frames`)
  from ``W``; ``DATA`` is the frame's fields in CBOR, base64.

A notice lost (a worker between two subscriptions) loses nothing
acknowledged: the message is in the store and goes at the next
``fetch`` or attach.  :func:`decode` takes whatever the channel carries
and raises :class:`NoticeError` for anything else.
"""

from __future__ import annotations

import base64
import binascii

import attrs

from cryptify.crs.messages.store import Stored
from cryptify.protocols import cbor_subset as cbor

#: Longest notice accepted (a call frame with its MIKEY message fits).
MAX_NOTICE = 64 * 1024
#: Longest URI, message ID, worker name or frame type in a notice.
MAX_WORD = 1024


class NoticeError(ValueError):
    """What came on the channel is not a notice."""


@attrs.frozen
class Wake:
    """A message was stored for ``uri`` (``stored``, when it comes along);
    ``absent``: from the parent, the account whose push wake-up the worker
    addressed asks for when ``uri`` is attached nowhere."""

    uri: str
    stored: Stored | None = None
    absent: str | None = None


@attrs.frozen
class Delivered:
    """``sender``'s message ``message_id`` was delivered."""

    sender: str
    message_id: str


@attrs.frozen
class AccountsChanged:
    """The accounts directory changed."""


@attrs.frozen
class Attached:
    """``uri`` attached to worker ``worker`` at ``since_ms``."""

    uri: str
    worker: str
    since_ms: int = 0


@attrs.frozen
class Detached:
    """``uri`` detached from worker ``worker``."""

    uri: str
    worker: str


@attrs.frozen
class Hello:
    """Worker ``worker`` subscribed."""

    worker: str


@attrs.frozen
class Ask:
    """Worker ``worker`` subscribed again."""

    worker: str


@attrs.frozen
class Gone:
    """Worker ``worker`` exited."""

    worker: str


@attrs.frozen
class Frame:
    """A call frame from worker ``worker``."""

    worker: str
    frame_type: str
    fields: dict[str, object]


Notice = Wake | Delivered | AccountsChanged | Attached | Detached | Hello | Ask | Gone | Frame


def channel(instance: str) -> str:
    """The pub/sub channel of instance ``instance``'s processes."""
    return f"crs:{instance}:workers"


def worker_name(index: int) -> str:
    """The name of worker ``index`` (0-based) in notices: ``w1`` ..."""
    return f"w{index + 1}"


def worker_channel(instance: str, worker: str) -> str:
    """The channel of one worker's call frames."""
    return f"crs:{instance}:workers:{worker}"


def _word(text: str, limit: int = MAX_WORD) -> str:
    if not text or len(text) > limit or any(c.isspace() or not c.isprintable() for c in text):
        raise NoticeError(f"not a notice word: {text[:40]!r}")
    return text


def encode(notice: Notice) -> str:
    """The line of ``notice``.

    @raise NoticeError: when a field could not be read back (spaces, empty).
    """
    if isinstance(notice, Wake):
        if notice.stored is None:
            if notice.absent is not None:
                return f"M {_word(notice.uri)} {_word(notice.absent)}"
            return f"m {_word(notice.uri)}"
        s = notice.stored
        fields = [s.id, s.sender, s.recipient, s.account, s.kind, s.time_ms, s.data]
        kind = "n" if notice.absent is None else "N"
        return f"{kind} {_word(notice.uri)} {_word(_pack(fields), MAX_NOTICE)}"
    if isinstance(notice, Delivered):
        return f"d {_word(notice.sender)} {_word(notice.message_id)}"
    if isinstance(notice, Attached):
        return f"at {_word(notice.uri)} {_word(notice.worker)} {int(notice.since_ms)}"
    if isinstance(notice, Detached):
        return f"dt {_word(notice.uri)} {_word(notice.worker)}"
    if isinstance(notice, Hello):
        return f"hi {_word(notice.worker)}"
    if isinstance(notice, Ask):
        return f"ask {_word(notice.worker)}"
    if isinstance(notice, Gone):
        return f"gone {_word(notice.worker)}"
    if isinstance(notice, Frame):
        try:
            data = base64.b64encode(cbor.encode(notice.fields)).decode("ascii")
        except cbor.CborError as exc:
            raise NoticeError(f"call frame not encoded: {exc}") from exc
        return f"c {_word(notice.worker)} {_word(notice.frame_type)} {_word(data, MAX_NOTICE)}"
    return "a"


def _pack(value: object) -> str:
    try:
        return base64.b64encode(cbor.encode(value)).decode("ascii")
    except cbor.CborError as exc:
        raise NoticeError(f"not encoded: {exc}") from exc


def _unpack(text: str) -> object:
    try:
        return cbor.decode(base64.b64decode(text.encode("ascii"), validate=True))
    except (ValueError, binascii.Error) as exc:
        raise NoticeError(f"notice data not readable: {exc}") from None


def _fields(text: str) -> dict[str, object]:
    value = _unpack(text)
    if not isinstance(value, dict):
        raise NoticeError("call frame fields are not a map")
    return value


def _stored(text: str) -> Stored:
    value = _unpack(text)
    if not isinstance(value, list) or len(value) != 7:
        raise NoticeError("stored message is not a list of 7")
    *texts, time_ms, data = value
    if not all(isinstance(t, str) for t in texts):
        raise NoticeError("stored message fields are not text")
    if not isinstance(time_ms, int) or isinstance(time_ms, bool) or not isinstance(data, bytes):
        raise NoticeError("stored message time or data has the wrong type")
    mid, sender, recipient, account, kind = (str(t) for t in texts)
    return Stored(mid, sender, recipient, account, kind, time_ms, data)


def decode(data: object) -> Notice:
    """The notice in ``data`` (a str or bytes from the channel).

    @raise NoticeError: naming what is wrong.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise NoticeError("notice is not UTF-8") from None
    if not isinstance(data, str):
        raise NoticeError(f"notice is a {type(data).__name__}, not text")
    if len(data) > MAX_NOTICE:
        raise NoticeError(f"notice longer than {MAX_NOTICE} characters")
    parts = data.split(" ")
    kind, args = parts[0], parts[1:]
    if kind == "m" and len(args) == 1:
        return Wake(_word(args[0]))
    if kind == "n" and len(args) == 2:
        return Wake(_word(args[0]), _stored(_word(args[1], MAX_NOTICE)))
    if kind == "N" and len(args) == 2:
        stored = _stored(_word(args[1], MAX_NOTICE))
        return Wake(_word(args[0]), stored, stored.account)
    if kind == "M" and len(args) == 2:
        return Wake(_word(args[0]), None, _word(args[1]))
    if kind == "d" and len(args) == 2:
        return Delivered(_word(args[0]), _word(args[1]))
    if kind == "a" and not args:
        return AccountsChanged()
    if kind == "at" and len(args) == 3 and args[2].isdigit() and len(args[2]) <= 20:
        return Attached(_word(args[0]), _word(args[1]), int(args[2]))
    if kind == "dt" and len(args) == 2:
        return Detached(_word(args[0]), _word(args[1]))
    if kind == "hi" and len(args) == 1:
        return Hello(_word(args[0]))
    if kind == "ask" and len(args) == 1:
        return Ask(_word(args[0]))
    if kind == "gone" and len(args) == 1:
        return Gone(_word(args[0]))
    if kind == "c" and len(args) == 3:
        return Frame(_word(args[0]), _word(args[1]), _fields(_word(args[2], MAX_NOTICE)))
    raise NoticeError(f"unknown notice {data[:40]!r}")
