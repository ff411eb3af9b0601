"""Notices between an instance's worker processes over ``redis_high`` pub/sub.

:class:`Siblings` publishes (a worker's messaging calls it for a recipient
or sender not attached in this process; the parent calls it when the
accounts change); :class:`WakeListener` keeps a subscribed connection in
each worker and hands each notice to the worker's messaging or accounts.
The notices and their rules are in :mod:`cryptify.crs.workers.notices`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from txredisapi import RedisProtocol, SubscriberProtocol

from cryptify.crs.messages.store import Stored
from cryptify.crs.redis.store import RedisStore, RedisStoreError
from cryptify.crs.slots import SLOTS, slot_of
from cryptify.crs.workers.notices import (
    AccountsChanged,
    Delivered,
    Notice,
    NoticeError,
    Wake,
    decode,
    encode,
    worker_channel,
    worker_name,
)
from cryptify.protocols.umsg import base_uri

log = Logger(namespace="cryptify.crs.workers")


class Mailman(Protocol):
    """What a notice asks of a worker's messaging
    (:class:`cryptify.crs.messages.wiring.Messaging`)."""

    def wake(self, uri: str, stored: Stored | None = None) -> None:
        """Send ``uri`` what waits for it (``stored`` at once), when it is attached here."""
        ...

    def tell_sender(self, sender: str, message_id: str) -> None:
        """Tell ``sender`` its message was delivered, when it is attached here."""
        ...


class Router(Protocol):
    """Where a worker addresses the notice about a client
    (:class:`cryptify.crs.workers.calls.WorkerLink`)."""

    def where(self, uri: str) -> str | None:
        """The other worker ``uri`` is attached to, as far as this one knows."""
        ...

    def route(self, uri: str) -> str:
        """The channel of the worker to tell about ``uri``: the one it is
        attached to, else the home worker of its slot."""
        ...


class HomeRouter:
    """The parent's :class:`Router`: a notice about a client goes to the
    home worker of its slot (of ``count``; any worker would do: each knows
    every worker's clients, :mod:`cryptify.crs.workers.calls`)."""

    def __init__(self, instance: str, count: int) -> None:
        self.instance = instance
        self.count = count

    def where(self, uri: str) -> str | None:
        return None

    def route(self, uri: str) -> str:
        home = worker_name(slot_of(base_uri(uri)) * self.count // SLOTS)
        return worker_channel(self.instance, home)


class Siblings:
    """Publishes notices to the instance's other processes.

    ``store``: the ``redis_high`` store (asked at each use); a notice that
    cannot go (Redis out of reach) is logged and dropped: the message it
    is about stays in the durable store.  With a :attr:`router` (a
    worker's), a notice about a client goes to one worker's channel (the
    one it is attached to, else its slot's home worker); without (the
    parent's), to every worker.
    """

    def __init__(self, store: Callable[[], RedisStore], channel: str) -> None:
        self.store = store
        self.channel = channel
        self.router: Router | None = None
        #: The parent's: the worker a notice goes to asks for the push
        #: wake-up of a recipient attached nowhere (the parent knows not).
        self.marks_absent = False
        self.sent = 0
        self.failed = 0

    def wake(self, uri: str, stored: Stored | None = None) -> bool:
        """``stored`` (or some message) was stored for ``uri``: the message
        goes along when it fits in a notice.  Whether ``uri`` is known to be
        attached to another worker (then no push wake-up is needed)."""
        to = None if self.router is None else self.router.route(uri)
        elsewhere = self.router is not None and self.router.where(uri) is not None
        absent = None
        if self.marks_absent and stored is not None and stored.kind != "ack":
            absent, elsewhere = stored.account, True  # (the push is the worker's)
        if stored is None:
            self.publish(Wake(uri), to)
            return elsewhere
        try:
            text = encode(Wake(uri, stored, absent))
        except NoticeError:
            self.publish(Wake(uri, None, absent), to)
            return elsewhere
        self._send(text, to)
        return elsewhere

    def tell_delivered(self, sender: str, message_id: str) -> None:
        to = None if self.router is None else self.router.route(sender)
        self.publish(Delivered(sender, message_id), to)

    def accounts_changed(self) -> None:
        self.publish(AccountsChanged())

    def publish(self, notice: Notice, to: str | None = None) -> bool:
        """Send ``notice`` on the instance's channel (or on ``to``); False
        when it cannot go now."""
        try:
            text = encode(notice)
        except NoticeError as exc:
            self._failed(Failure(exc))
            return False
        if isinstance(notice, AccountsChanged) and not self._connected():
            # every worker reads the accounts when it (re)subscribes
            log.debug("accounts notice not sent: redis_high not connected")
            return False
        return self._send(text, to)

    def _connected(self) -> bool:
        try:
            return self.store().connected
        except KeyError:
            return False

    def _send(self, text: str, to: str | None) -> bool:
        try:
            client = self.store().client
        except (RedisStoreError, KeyError) as exc:
            self._failed(Failure(exc))
            return False
        d: defer.Deferred[Any] = defer.maybeDeferred(client.publish, to or self.channel, text)
        d.addCallbacks(self._sent, self._failed)
        return True

    def _sent(self, _receivers: object) -> None:
        self.sent += 1

    def _failed(self, failure: Failure) -> None:
        self.failed += 1
        log.warn("notice to the other workers not sent: {why}", why=failure.getErrorMessage())


class _Subscriber(SubscriberProtocol):  # type: ignore[misc]
    """A subscribed connection handing every message (and its channel) to
    ``received``."""

    received: Callable[[object, object], None] = staticmethod(lambda data, on: None)

    def messageReceived(self, pattern: object, channel: object, message: object) -> None:
        self.received(message, channel)


class Peers(Protocol):
    """What the notices about other workers ask of a worker
    (:class:`cryptify.crs.workers.calls.WorkerLink`)."""

    #: The worker's own channel (call frames for it).
    channel: str

    def received(self, notice: Notice) -> None:
        """An attach, detach, hello, gone or call frame notice."""
        ...

    def subscribed(self) -> None:
        """The subscription is (again) in place."""
        ...

    def mine(self, notice: Wake | Delivered) -> bool:
        """A notice addressed to this worker: whether it is for a client
        attached here (else it was passed on, or dropped)."""
        ...


def _text(channel: object) -> str | None:
    if isinstance(channel, bytes):
        return channel.decode("utf-8", "replace")
    return channel if isinstance(channel, str) else None


class WakeListener(service.Service):
    """A worker's subscription to its instance's channel.

    ``store``: a :class:`RedisStore` of its own to ``redis_high`` (a
    subscribed connection serves nothing else), started and stopped with
    this service; it subscribes on every (re)connection, and then reads
    the accounts again, in case a change went by while it was away.
    """

    def __init__(
        self,
        store: RedisStore,
        channel: str,
        mailman: Mailman,
        accounts_changed: Callable[[], object],
        peers: Peers | None = None,
    ) -> None:
        self.store = store
        self.channel = channel
        self.mailman = mailman
        self.accounts_changed = accounts_changed
        self.peers = peers
        self.refused = 0
        store.protocol = _Subscriber
        store.on_connect.append(self._connected)

    def _connected(self, protocol: RedisProtocol) -> None:
        assert isinstance(protocol, _Subscriber)
        protocol.received = self.received
        channels = [self.channel] if self.peers is None else [self.channel, self.peers.channel]
        d: defer.Deferred[Any] = protocol.subscribe(channels)
        d.addCallbacks(
            self._subscribed,
            lambda f: log.warn("cannot subscribe: {why}", why=f.getErrorMessage()),
        )

    def _subscribed(self, _: object) -> None:
        self._reload()
        if self.peers is not None:
            self.peers.subscribed()

    def received(self, data: object, on: object = None) -> None:
        """One message from the channel (``on``: the channel it came on)."""
        try:
            notice = decode(data)
        except NoticeError as exc:
            self.refused += 1
            log.warn("not a notice on {channel}: {why}", channel=self.channel, why=str(exc))
            return
        peers = self.peers
        if (
            peers is not None
            and isinstance(notice, Wake | Delivered)
            and _text(on) == peers.channel
            and not peers.mine(notice)
        ):
            return
        if isinstance(notice, Wake):
            self.mailman.wake(notice.uri, notice.stored)
        elif isinstance(notice, Delivered):
            self.mailman.tell_sender(notice.sender, notice.message_id)
        elif isinstance(notice, AccountsChanged):
            self._reload()
        elif self.peers is not None:
            self.peers.received(notice)

    def _reload(self) -> None:
        try:
            self.accounts_changed()
        except Exception:
            log.failure("accounts not read again")

    def startService(self) -> None:
        service.Service.startService(self)
        self.store.startService()

    def stopService(self) -> defer.Deferred[None]:
        service.Service.stopService(self)
        return self.store.stopService()
