"""
The SIP transaction layer (RFC 3261 section 17, with RFC 6026's
"Accepted" states), sans-IO: messages come in through
L{TransactionLayer.receive} with the L{Channel} they arrived on, go out
through channels, and every timer runs on an injected C{IReactorTime}.

Server transactions (a request we received):

    INVITE:      proceeding --1xx--> proceeding
                 proceeding --2xx--> accepted  (2xx resent on UDP until the
                                                ACK, timer L ends it)
                 proceeding --3xx-6xx--> completed (resent, timer G; H ends)
                 completed --ACK--> confirmed --timer I--> terminated
    non-INVITE:  trying --1xx--> proceeding --final--> completed
                 --timer J--> terminated

    A retransmitted request gets the last response again.

Client transactions (a request we send):

    INVITE:      calling (timer A resends, B times out) --1xx--> proceeding
                 --2xx--> accepted (timer M; further 2xx go to the user)
                 --3xx-6xx--> completed (ACK sent, resent on repeats, another
                                         To's failure ACKed with its To; timer D)
    non-INVITE:  trying (timer E resends, F times out) --1xx--> proceeding
                 --final--> completed --timer K--> terminated

On reliable transports (TCP) nothing is resent and the waiting timers
(D, I, J, K) are zero.

Every transaction may also end at once (shutdown, transport error; RFC
3261 17.1.4, 17.2.4).  The states are L{TxState} members; each kind of
transaction moves only along its table (L{INVITE_SERVER},
L{NON_INVITE_SERVER}, L{INVITE_CLIENT}, L{NON_INVITE_CLIENT}), and any other
move raises L{cryptify.lifecycle.IllegalTransition}.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Protocol

import attrs
from twisted.internet.interfaces import IReactorTime

from cryptify.lifecycle import Lifecycle

from .address import shared_name_addr
from .errors import SipParseError
from .message import Headers, Request, Response, check_request, check_response
from .timers import Timer, TimerQueue

#: RFC 3261 timer values, in seconds.
T1 = 0.5
T2 = 4.0
T4 = 5.0
MAGIC_COOKIE = "z9hG4bK"

Address = tuple[str, int]


class TxState(enum.StrEnum):
    """
    The states of a transaction (RFC 3261 17.1, 17.2; RFC 6026's
    "Accepted").  C{ACKNOWLEDGED} is an accepted INVITE server transaction
    whose 2xx has been acknowledged: it stops resending and waits for
    timer L.  The value is the name shown to operators.
    """

    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    ACKNOWLEDGED = "acknowledged"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


Transitions = Mapping[TxState, frozenset[TxState]]

_S = TxState

#: INVITE server transaction (RFC 3261 17.2.1, RFC 6026 7.1).
INVITE_SERVER: Transitions = {
    _S.PROCEEDING: frozenset({_S.PROCEEDING, _S.ACCEPTED, _S.COMPLETED, _S.TERMINATED}),
    _S.ACCEPTED: frozenset({_S.ACKNOWLEDGED, _S.TERMINATED}),
    _S.ACKNOWLEDGED: frozenset({_S.TERMINATED}),
    _S.COMPLETED: frozenset({_S.CONFIRMED, _S.TERMINATED}),
    _S.CONFIRMED: frozenset({_S.TERMINATED}),
    _S.TERMINATED: frozenset(),
}

#: non-INVITE server transaction (RFC 3261 17.2.2).
NON_INVITE_SERVER: Transitions = {
    _S.TRYING: frozenset({_S.PROCEEDING, _S.COMPLETED, _S.TERMINATED}),
    _S.PROCEEDING: frozenset({_S.PROCEEDING, _S.COMPLETED, _S.TERMINATED}),
    _S.COMPLETED: frozenset({_S.TERMINATED}),
    _S.TERMINATED: frozenset(),
}

#: INVITE client transaction (RFC 3261 17.1.1, RFC 6026 7.2).
INVITE_CLIENT: Transitions = {
    _S.CALLING: frozenset({_S.PROCEEDING, _S.ACCEPTED, _S.COMPLETED, _S.TERMINATED}),
    _S.PROCEEDING: frozenset({_S.PROCEEDING, _S.ACCEPTED, _S.COMPLETED, _S.TERMINATED}),
    _S.ACCEPTED: frozenset({_S.TERMINATED}),
    _S.COMPLETED: frozenset({_S.TERMINATED}),
    _S.TERMINATED: frozenset(),
}

#: non-INVITE client transaction (RFC 3261 17.1.2).
NON_INVITE_CLIENT: Transitions = {
    _S.TRYING: frozenset({_S.PROCEEDING, _S.COMPLETED, _S.TERMINATED}),
    _S.PROCEEDING: frozenset({_S.PROCEEDING, _S.COMPLETED, _S.TERMINATED}),
    _S.COMPLETED: frozenset({_S.TERMINATED}),
    _S.TERMINATED: frozenset(),
}


class Channel(Protocol):
    """Where a message came from, and the way back to it."""

    @property
    def reliable(self) -> bool: ...

    @property
    def address(self) -> Address: ...

    def send(self, data: bytes) -> None: ...


class TransactionUser(Protocol):
    """What the layer above (a UA core) is told."""

    def request_received(self, transaction: ServerTransaction) -> None:
        """A new request (not a retransmission, not an ACK)."""

    def ack_received(self, request: Request, channel: Channel) -> None:
        """An ACK that matches no server transaction (the ACK of a 2xx)."""

    def no_ack(self, transaction: ServerTransaction) -> None:
        """A 2xx to an INVITE was never acknowledged (timer L)."""

    def bad_message(self, error: SipParseError, channel: Channel) -> None:
        """A message failed the checks; answer it or drop it."""


def _key_branch(branch: str | None) -> bool:
    return branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > 7


def server_key(request: Request) -> tuple[str, ...]:
    """
    The server transaction a request belongs to (RFC 3261 17.2.3); an ACK
    belongs to its INVITE's. Without the magic cookie, RFC 2543 matching
    on Call-ID, CSeq number, From tag and top Via.
    """
    via = request.top_via
    method = "INVITE" if request.method == "ACK" else request.method
    if _key_branch(via.branch):
        return ("3261", via.branch or "", via.host, str(via.port or ""), method)
    return (
        "2543",
        request.call_id,
        str(request.cseq.number),
        request.from_.tag or "",
        str(via),
        method,
    )


def client_key(message: Request | Response) -> tuple[str, str]:
    """The client transaction of a response: top Via branch and CSeq method."""
    method = message.cseq.method
    if isinstance(message, Request) and message.method == "ACK":
        method = "INVITE"
    return (message.top_via.branch or "", method)


@attrs.define(eq=False)
class ServerTransaction:
    """
    A request we received and the responses we give to it.

    Its timers (RFC 3261 17.2): C{_resend} is G, C{_end} is H, I, J or L.
    """

    layer: TransactionLayer
    request: Request
    channel: Channel
    key: tuple[str, ...]
    #: The last response, as sent (a retransmission sends these bytes again).
    _sent: bytes | None = None
    _resend: Timer | None = None
    _end: Timer | None = None
    _interval: float = T1
    _life: Lifecycle[TxState] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        kind = "INVITE server" if self.is_invite else "non-INVITE server"
        first = TxState.PROCEEDING if self.is_invite else TxState.TRYING
        self._life = Lifecycle(f"{kind} transaction", self.transitions, first)

    @property
    def state(self) -> TxState:
        return self._life.state

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    @property
    def transitions(self) -> Transitions:
        return INVITE_SERVER if self.is_invite else NON_INVITE_SERVER

    def _move(self, new: TxState) -> None:
        self._life.move(new)

    @property
    def dialog_key(self) -> tuple[str, int]:
        """Call-ID and CSeq number: how the ACK of a 2xx finds its INVITE."""
        return (self.request.call_id, self.request.cseq.number)

    def respond(self, response: Response) -> None:
        """Send C{response}; finals move the transaction on."""
        if self.state not in (TxState.TRYING, TxState.PROCEEDING):
            return
        self._sent = response.to_bytes()
        self.channel.send(self._sent)
        status = response.status
        reliable = self.channel.reliable
        timers = self.layer.timers
        if status < 200:
            self._move(TxState.PROCEEDING)
        elif self.is_invite and status < 300:
            self._move(TxState.ACCEPTED)
            self.layer.accepted[self.dialog_key] = self
            if not reliable:
                self._interval = T1
                self._resend = timers.call_later(T1, ServerTransaction._resend_2xx, self)
            self._end = timers.call_later(64 * T1, ServerTransaction._timer_l, self)
        elif self.is_invite:
            self._move(TxState.COMPLETED)
            if not reliable:
                self._interval = T1
                self._resend = timers.call_later(T1, ServerTransaction._resend_final, self)
            self._end = timers.call_later(64 * T1, ServerTransaction._terminate, self)
        else:
            self._move(TxState.COMPLETED)
            delay = 0 if reliable else 64 * T1
            self._end = timers.call_later(delay, ServerTransaction._terminate, self)

    def _send(self) -> None:
        if self._sent is not None:
            self.channel.send(self._sent)

    def _resend_final(self) -> None:
        self._send()
        self._interval = min(2 * self._interval, T2)
        self._resend = self.layer.timers.call_later(
            self._interval, ServerTransaction._resend_final, self
        )

    def _resend_2xx(self) -> None:
        self._send()
        self._interval = min(2 * self._interval, T2)
        self._resend = self.layer.timers.call_later(
            self._interval, ServerTransaction._resend_2xx, self
        )

    def _timer_l(self) -> None:
        acked = self.state is TxState.ACKNOWLEDGED
        self._terminate()
        if not acked:
            self.layer.user.no_ack(self)

    def retransmitted(self) -> None:
        """The same request came again: answer it as before."""
        if self.state in (TxState.PROCEEDING, TxState.COMPLETED, TxState.ACCEPTED):
            self._send()

    def ack(self, request: Request) -> bool:
        """
        An ACK for this INVITE; C{True} if it acknowledged a non-2xx final
        (absorbed here), C{False} if the user should see it.
        """
        if self.state is TxState.COMPLETED:
            self._move(TxState.CONFIRMED)
            self._stop_timers()
            delay = 0 if self.channel.reliable else T4
            self._end = self.layer.timers.call_later(delay, ServerTransaction._terminate, self)
            return True
        if self.state is TxState.ACCEPTED:
            self._move(TxState.ACKNOWLEDGED)
            if self._resend is not None:
                self._resend.cancel()
                self._resend = None
            # Only the bytes of a final response are resent; none will be now.
            self._sent = None
            return False
        return self.state is TxState.CONFIRMED

    def _stop_timers(self) -> None:
        if self._resend is not None:
            self._resend.cancel()
            self._resend = None
        if self._end is not None:
            self._end.cancel()
            self._end = None

    def _terminate(self) -> None:
        self._stop_timers()
        if self.state is not TxState.TERMINATED:
            self._move(TxState.TERMINATED)
            self.layer.forget_server(self)


@attrs.define(eq=False)
class ClientTransaction:
    """
    A request we sent, its retransmissions, and what became of it.

    Its timers (RFC 3261 17.1): C{_resend} is A or E, C{_end} is B (F),
    D, K or M.
    """

    layer: TransactionLayer
    request: Request
    channel: Channel
    on_response: Callable[[Response], None]
    on_timeout: Callable[[], None]
    key: tuple[str, str]
    _ack: bytes | None = None
    #: The To of the failure C{_ack} acknowledges (its repeats get C{_ack}).
    _acked_to: str | None = None
    _resend_timer: Timer | None = None
    _end: Timer | None = None
    _interval: float = T1
    _life: Lifecycle[TxState] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        kind = "INVITE client" if self.is_invite else "non-INVITE client"
        first = TxState.CALLING if self.is_invite else TxState.TRYING
        self._life = Lifecycle(f"{kind} transaction", self.transitions, first)

    @property
    def state(self) -> TxState:
        return self._life.state

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    @property
    def transitions(self) -> Transitions:
        return INVITE_CLIENT if self.is_invite else NON_INVITE_CLIENT

    def _move(self, new: TxState) -> None:
        self._life.move(new)

    def start(self) -> None:
        timers = self.layer.timers
        self.channel.send(self.request.to_bytes())
        if not self.channel.reliable:
            self._resend_timer = timers.call_later(T1, ClientTransaction._resend, self)
        self._end = timers.call_later(64 * T1, ClientTransaction._timed_out, self)

    def _resend(self) -> None:
        self._resend_timer = None
        if self.state not in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING):
            return
        self.channel.send(self.request.to_bytes())
        if self.is_invite:
            self._interval = 2 * self._interval
        else:
            self._interval = T2 if self.state is TxState.PROCEEDING else min(2 * self._interval, T2)
        self._resend_timer = self.layer.timers.call_later(
            self._interval, ClientTransaction._resend, self
        )

    def _timed_out(self) -> None:
        self._terminate()
        self.on_timeout()

    def _stop_timers(self) -> None:
        if self._resend_timer is not None:
            self._resend_timer.cancel()
            self._resend_timer = None
        if self._end is not None:
            self._end.cancel()
            self._end = None

    def received(self, response: Response) -> None:
        """A response matching this transaction."""
        status = response.status
        if self.state in (TxState.COMPLETED, TxState.TERMINATED):
            if self._ack is not None and status >= 300:
                if response.headers.get("To") == self._acked_to:
                    self.channel.send(self._ack)
                else:  # another UAS's failure: the ACK carries its To (17.1.1.3)
                    self.channel.send(ack_for(self.request, response).to_bytes())
            return
        if self.state is TxState.ACCEPTED:
            if 200 <= status < 300:
                self.on_response(response)
            return
        if status < 200:
            if self.is_invite:
                self._stop_timers()
            self._move(TxState.PROCEEDING)
            self.on_response(response)
            return
        self._stop_timers()
        reliable = self.channel.reliable
        timers = self.layer.timers
        if self.is_invite and status < 300:
            self._move(TxState.ACCEPTED)
            self._end = timers.call_later(64 * T1, ClientTransaction._terminate, self)
        elif self.is_invite:
            self._move(TxState.COMPLETED)
            self._ack = ack_for(self.request, response).to_bytes()
            self._acked_to = response.headers.get("To")
            self.channel.send(self._ack)
            delay = 0 if reliable else 32.0
            self._end = timers.call_later(delay, ClientTransaction._terminate, self)
        else:
            self._move(TxState.COMPLETED)
            delay = 0 if reliable else T4
            self._end = timers.call_later(delay, ClientTransaction._terminate, self)
        self.on_response(response)

    def _terminate(self) -> None:
        self._stop_timers()
        if self.state is not TxState.TERMINATED:
            self._move(TxState.TERMINATED)
            self.layer.forget_client(self)


def ack_for(invite: Request, response: Response) -> Request:
    """
    The ACK of a non-2xx final response (RFC 3261 17.1.1.3): the INVITE's
    URI, top Via, From, Call-ID, CSeq number and Route, the response's To.
    """
    headers = Headers()
    headers = headers.add("Via", invite.headers.values("Via")[0])
    for name in ("Max-Forwards", "From"):
        value = invite.headers.get(name)
        if value is not None:
            headers = headers.add(name, value)
    headers = headers.add("To", response.headers.get("To") or "")
    headers = headers.add("Call-ID", invite.call_id)
    headers = headers.add("CSeq", f"{invite.cseq.number} ACK")
    for route in invite.headers.get_all("Route"):
        headers = headers.add("Route", route)
    return Request("ACK", invite.uri, headers)


@attrs.define(eq=False)
class TransactionLayer:
    """
    Matches messages to transactions, creates server transactions for new
    requests, and starts client transactions.
    """

    clock: IReactorTime
    user: TransactionUser
    servers: dict[tuple[str, ...], ServerTransaction] = attrs.field(factory=dict)
    #: Every transaction's timers, on one delayed call of C{clock}.
    timers: TimerQueue = attrs.field(
        init=False, default=attrs.Factory(lambda self: TimerQueue(self.clock), takes_self=True)
    )
    clients: dict[tuple[str, str], ClientTransaction] = attrs.field(factory=dict)
    accepted: dict[tuple[str, int], ServerTransaction] = attrs.field(factory=dict)

    def receive(self, message: Request | Response, channel: Channel) -> None:
        """A parsed message from C{channel}."""
        if isinstance(message, Response):
            try:
                check_response(message)
                ckey = client_key(message)
            except SipParseError:
                return  # a response we cannot match is dropped
            client = self.clients.get(ckey)
            if client is not None:
                client.received(message)
            return
        try:
            check_request(message)
            key = server_key(message)
        except SipParseError as exc:
            if message.method != "ACK":
                self.user.bad_message(exc, channel)
            return
        server = self.servers.get(key)
        if message.method == "ACK":
            if server is None:
                server = self.accepted.get((message.call_id, message.cseq.number))
            if server is None or not server.ack(message):
                self.user.ack_received(message, channel)
            return
        if server is not None:
            server.retransmitted()
            return
        server = ServerTransaction(self, message, channel, key)
        self.servers[key] = server
        self.user.request_received(server)

    def invite_for(self, cancel: Request) -> ServerTransaction | None:
        """The INVITE server transaction a CANCEL is for (17.2.3)."""
        try:
            key = server_key(Request("INVITE", cancel.uri, cancel.headers))
        except SipParseError:
            return None
        return self.servers.get(key)

    def request(
        self,
        request: Request,
        channel: Channel,
        on_response: Callable[[Response], None],
        on_timeout: Callable[[], None],
    ) -> ClientTransaction:
        """
        Send C{request} (its top Via carries a fresh branch) in a new
        client transaction.
        """
        key = client_key(request)
        client = ClientTransaction(self, request, channel, on_response, on_timeout, key)
        self.clients[key] = client
        client.start()
        return client

    def forget_server(self, transaction: ServerTransaction) -> None:
        if self.servers.get(transaction.key) is transaction:
            del self.servers[transaction.key]
        if self.accepted.get(transaction.dialog_key) is transaction:
            del self.accepted[transaction.dialog_key]

    def forget_client(self, transaction: ClientTransaction) -> None:
        if self.clients.get(transaction.key) is transaction:
            del self.clients[transaction.key]

    def stop(self) -> None:
        """End every transaction and cancel every timer (at shutdown)."""
        for server in list(self.servers.values()):
            server._terminate()
        for client in list(self.clients.values()):
            client._terminate()
        self.timers.stop()


def tag_of(value: str | None) -> str | None:
    """The tag of a From/To value, or C{None} if absent or unreadable."""
    if value is None:
        return None
    try:
        return shared_name_addr(value).tag
    except SipParseError:
        return None
