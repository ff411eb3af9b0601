"""The notices an instance's processes send each other on Redis pub/sub.

With ``workers N`` (N > 1) every worker subscribes to one channel of
``redis_high`` (:func:`channel`); a message travels through the durable
store in ``redis_low`` as before, and only a short notice goes on the
channel.  One notice is one line of text:

- ``m URI``: a message was stored for ``URI``; the worker where ``URI``
  is attached sends what waits for it (a wake-up, no content).
- ``d URI MESSAGE-ID``: ``URI``'s message was delivered; the worker where
  ``URI`` is attached tells it ``delivered``.
- ``a``: the accounts changed (``create account``, ``apply`` ...); every
  worker reads the accounts directory again.

A notice lost (a worker between two subscriptions) loses nothing
acknowledged: the message is in the store and goes at the next
``fetch`` or attach.  :func:`decode` takes whatever the channel carries
and raises :class:`NoticeError` for anything else.
"""

from __future__ import annotations

import attrs

#: Longest notice accepted (a URI and a message ID fit well within it).
MAX_NOTICE = 1024


class NoticeError(ValueError):
    """What came on the channel is not a notice."""


@attrs.frozen
class Wake:
    """A message was stored for ``uri``."""

    uri: str


@attrs.frozen
class Delivered:
    """``sender``'s message ``message_id`` was delivered."""

    sender: str
    message_id: str


@attrs.frozen
class AccountsChanged:
    """The accounts directory changed."""


Notice = Wake | Delivered | AccountsChanged


def channel(instance: str) -> str:
    """The pub/sub channel of instance ``instance``'s processes."""
    return f"crs:{instance}:workers"


def _word(text: str) -> str:
    if not text or len(text) > MAX_NOTICE or any(c.isspace() or not c.isprintable() for c in text):
        raise NoticeError(f"not a notice word: {text[:40]!r}")
    return text


def encode(notice: Notice) -> str:
    """The line of ``notice``.

    @raise NoticeError: when a field could not be read back (spaces, empty).
    """
    if isinstance(notice, Wake):
        return f"m {_word(notice.uri)}"
    if isinstance(notice, Delivered):
        return f"d {_word(notice.sender)} {_word(notice.message_id)}"
    return "a"


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
    if kind == "d" and len(args) == 2:
        return Delivered(_word(args[0]), _word(args[1]))
    if kind == "a" and not args:
        return AccountsChanged()
    raise NoticeError(f"unknown notice {data[:40]!r}")
