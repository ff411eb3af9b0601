"""The client put together on Twisted: attach, calls with media, messages.

:class:`Phone` keeps one URI attached (:class:`~cryptify.client.connection.AttachingClient`),
feeds every session event to a :class:`~cryptify.client.calls.CallAgent`
and a :class:`~cryptify.client.messages.Messenger`, runs a
:class:`~cryptify.client.media.MediaLeg` for each call that has media,
and reports every event to ``on_event``.  :meth:`Phone.until` waits for
an event (the command line and the tests use it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence

from twisted.internet import defer

from cryptify.client.calls import END, MEDIA, TALK, Call, CallAgent, CallEvent
from cryptify.client.connection import (
    AttachingClient,
    ConnectionEnded,
    Connector,
    Event,
    GaveUp,
)
from cryptify.client.media import FrameSource, MediaLeg, MediaStream, Recorder, pick_ssrc
from cryptify.client.messages import MessageCrypto, MessageEvent, Messenger
from cryptify.client.session import Attached, ClientSession
from cryptify.crypto.domains import PeerDomain
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.protocols.umsg import Message
from cryptify.reactor import IReactor

PhoneEvent = Event | CallEvent | MessageEvent


class Phone:
    """One attached URI that places and takes calls and sends messages."""

    def __init__(
        self,
        reactor: IReactor,
        material: KeyMaterial,
        connect: Connector,
        make_session: Callable[[Callable[[Message], None]], ClientSession],
        host: str,
        port: int,
        on_event: Callable[[PhoneEvent], None] | None = None,
        play: Sequence[int] = (),
        loop_play: bool = False,
        fetch_on_attach: bool = False,
        media_interface: str = "",
        servers: Sequence[tuple[str, int]] = (),
        codecs: Sequence[str] = (),
        domains: Mapping[str, PeerDomain] | None = None,
    ) -> None:
        self.reactor = reactor
        self.material = material
        self.on_event = on_event
        self.play = play
        self.loop_play = loop_play
        self.fetch_on_attach = fetch_on_attach
        self.media_interface = media_interface
        known = dict(domains or {})
        self.agent = CallAgent(material, reactor.seconds, codecs=tuple(codecs), domains=known)
        self.crypto = MessageCrypto(material, domains=known)
        self.messenger = Messenger(crypto=self.crypto)
        self.legs: dict[Call, MediaLeg] = {}
        #: The recording of every call that had media, by call.
        self.recordings: dict[Call, Recorder] = {}
        self._ended_streams: dict[Call, MediaStream] = {}
        self._waiters: list[tuple[Callable[[PhoneEvent], bool], defer.Deferred[PhoneEvent]]] = []

        def session(send: Callable[[Message], None]) -> ClientSession:
            made = make_session(send)
            self.agent.session = made
            self.messenger.session = made
            return made

        self.client = AttachingClient(
            reactor, connect, session, host, port, self._event, servers=tuple(servers)
        )

    # ------------------------------------------------------------ control

    def start(self) -> defer.Deferred[PhoneEvent]:
        """Connect; fires with the first :class:`Attached`."""
        d = self.until(lambda e: isinstance(e, Attached))
        self.client.start()
        return d

    def stop(self) -> defer.Deferred[None]:
        """Hang up every call, stop media, detach."""
        for call in list(self.agent.calls.values()):
            self._call_events(self.agent.hangup(call))
        for leg in self.legs.values():
            leg.stop()
        self.legs.clear()
        return self.client.stop()

    def place(self, to: str, to_account: str | None = None) -> Call:
        """Call ``to``, of the account ``to_account`` when another operator hosts it
        (:class:`~cryptify.client.calls.CallError`: not attached, or no
        parameters of that security domain)."""
        return self.agent.place(to, to_account)

    def answer(self, call: Call) -> None:
        self._call_events(self.agent.answer(call))

    def hangup(self, call: Call, code: str = "normal") -> None:
        self._call_events(self.agent.hangup(call, code))

    def hold(self, call: Call, held: bool = True) -> None:
        """Put the call on hold, or take it off (the media keeps flowing)."""
        self.agent.hold(call, held)

    def send_dtmf(self, call: Call, digits: str) -> None:
        """Send DTMF digits in the call's media (ValueError: not digits, or no media yet)."""
        leg = self.legs.get(call)
        if leg is None:
            raise ValueError("the call has no media")
        leg.stream.send_dtmf(digits)

    def dtmf_received(self, call: Call) -> str:
        """The DTMF digits the other side has sent in this call."""
        leg = self.legs.get(call)
        stream = leg.stream if leg is not None else self._ended_streams.get(call)
        return "".join(stream.dtmf_received.digits) if stream is not None else ""

    def forget(self, call: Call) -> None:
        """Drop what is kept of an ended call (its recording and digits)."""
        self.recordings.pop(call, None)
        self._ended_streams.pop(call, None)

    def post(
        self, to: str, content: bytes, key: bytes | None = None, to_account: str | None = None
    ) -> int:
        """Post a message (``key``: the key of an earlier attempt, to retry it;
        ``to_account``: the recipient's account when another operator hosts it)."""
        return self.messenger.post(to, content, key, to_account)

    def until(self, predicate: Callable[[PhoneEvent], bool]) -> defer.Deferred[PhoneEvent]:
        """Fires with the next event for which ``predicate`` is true."""
        d: defer.Deferred[PhoneEvent] = defer.Deferred()
        self._waiters.append((predicate, d))
        return d

    def recording(self, call: Call) -> Recorder:
        return self.recordings.get(call) or Recorder()

    def stream(self, call: Call) -> MediaStream | None:
        leg = self.legs.get(call)
        return leg.stream if leg is not None else None

    # ------------------------------------------------------------ events

    def _emit(self, event: PhoneEvent) -> None:
        if self.on_event is not None:
            self.on_event(event)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate(event):
                self._waiters.remove(waiter)
                d.callback(event)

    def _event(self, event: Event) -> None:
        self._emit(event)
        if isinstance(event, ConnectionEnded):
            self._call_events(self.agent.detached())
            for lost in self.messenger.connection_lost():
                self._emit(lost)
            return
        if isinstance(event, GaveUp):
            return
        if isinstance(event, Attached) and self.fetch_on_attach:
            self.messenger.fetch()
        if not isinstance(event, ConnectionEnded):
            self._call_events(self.agent.handle(event))
            for got in self.messenger.handle(event):
                self._emit(got)

    def _call_events(self, events: list[CallEvent]) -> None:
        for event in events:
            if event.kind == MEDIA:
                self._start_media(event.call)
            elif event.kind == TALK and event.call.outgoing:
                stream = self.stream(event.call)
                if stream is not None:  # the callee named the codec
                    stream.use_codec(event.call.codec)
            elif event.kind == END:
                self._stop_media(event.call)
            self._emit(event)

    # ------------------------------------------------------------ media

    def _start_media(self, call: Call) -> None:
        relay, tag = call.relay, call.relay_tag
        if relay is None or tag is None or call in self.legs:
            return
        stream = MediaStream(
            call.policy_key,
            tag,
            pick_ssrc(call.outgoing),
            source=FrameSource(self.play, loop=self.loop_play),
            codec=call.codec,
        )
        self.recordings[call] = stream.recorder
        host, port = relay
        try:
            ipaddress.ip_address(host)
        except ValueError:
            d = self.reactor.resolve(host)
            d.addCallback(lambda ip: self._listen(call, stream, (ip, port)))
            d.addErrback(lambda f: self.hangup(call, "media-failed"))
            return
        self._listen(call, stream, (host, port))

    def _listen(self, call: Call, stream: MediaStream, relay: tuple[str, int]) -> None:
        if call.state == "ended":
            return
        leg = MediaLeg(stream, relay, self.reactor)
        self.legs[call] = leg
        self.reactor.listenUDP(0, leg, interface=self.media_interface, maxPacketSize=8192)

    def _stop_media(self, call: Call) -> None:
        leg = self.legs.pop(call, None)
        if leg is not None:
            leg.stop()
            self._ended_streams[call] = leg.stream
