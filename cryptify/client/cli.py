"""``cryptify-client``: the reference secure client.

``cryptify-client attach --keys FILE --server HOST:PORT [--ca FILE | --insecure]``
attaches the URI of a key file (from ``cryptify-kms issue``) to a CRS, stays
attached, reconnects with backoff when the connection ends, and prints one
line per event until Ctrl-C or SIGTERM (then it detaches).

``call URI`` places a call (a real MIKEY-SAKKE I_MESSAGE, SRTP through the
relay) playing and recording WAV files; ``answer`` takes the next call;
``listen`` prints incoming messages and calls (and answers them with
``--auto-answer``); ``send URI TEXT [--attach FILE]...`` posts a message,
sealed end to end (docs/messages.md); ``listen`` shows each one verified
and decrypted, or says FAILED TO VERIFY.  Digits the other
side sends as telephone-events are printed when a call ends.  ``docs/client.md``
describes them.
"""

from __future__ import annotations

import argparse
import contextlib
import mimetypes
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, TypeVar

from twisted.internet import defer
from twisted.internet.task import deferLater

from cryptify.client.audio import AudioError, read_wav, tone, write_wav
from cryptify.client.calls import END, INCOMING, TALK, Call, CallError, CallEvent
from cryptify.client.connection import AttachingClient, ConnectionEnded, Event, GaveUp
from cryptify.client.messages import Posted, Receipt, Received, new_message_key
from cryptify.client.phone import Phone, PhoneEvent
from cryptify.client.servers import (
    expand_servers,
    session_maker,
    tls_connector,
)
from cryptify.client.session import (
    Answered,
    Attached,
    Disconnected,
    Incoming,
    Moved,
    Refused,
)
from cryptify.crypto.domains import DomainFileError, by_account, load_domain
from cryptify.crypto.errors import CryptoError
from cryptify.crypto.keymaterial import KeyMaterial, load_key_material
from cryptify.protocols.message_payload import Attachment, MessageBody, PayloadError
from cryptify.protocols.tls import TLSConfigError, client_context_factory
from cryptify.protocols.umsg import MAX_CONTENT
from cryptify.reactor import IReactor

from .cli_args import ACTIONS, HELP, build_parser

#: Seconds to wait for the attach before giving up (call, answer, send).
ATTACH_WAIT = 30.0

T = TypeVar("T")


def describe(event: PhoneEvent) -> str:
    """One line for an event."""
    if isinstance(event, Attached):
        resumed = ", with ticket" if event.resumed else ""
        return (
            f"attached {event.uri} to {event.crs} (slot {event.slot}, "
            f"keep-alive {event.keepalive} {event.interval_ms} ms{resumed})"
        )
    if isinstance(event, Moved):
        return f"moved to {event.crs} at {event.host}:{event.port}"
    if isinstance(event, Refused):
        who = "gave up" if event.local else "refused"
        return f"{who}: {event.code} ({event.reason})"
    if isinstance(event, Disconnected):
        return f"disconnected: {event.code} ({event.reason})"
    if isinstance(event, Answered):
        return f"answer to {event.id}: {event.message.type} {dict(event.message.fields)}"
    if isinstance(event, Incoming):
        return f"incoming {event.message.type}: {dict(event.message.fields)}"
    if isinstance(event, CallEvent):
        call = event.call
        peer = f"{call.peer} ({call.account})" if call.account else call.peer
        where = f"call {call.session or '?'} {'to' if call.outgoing else 'from'} {peer}"
        if event.kind == END:
            reason = f" ({call.reason})" if call.reason else ""
            return f"{where} ended: {call.code} by {call.who}{reason}"
        return f"{where}: {event.kind}"
    if isinstance(event, Posted):
        if event.error is not None:
            return f"message {event.request_id} refused: {event.error}"
        return f"posted message {event.message}"
    if isinstance(event, Received):
        return describe_received(event)
    if isinstance(event, Receipt):
        return f"delivered message {event.message}"
    if isinstance(event, GaveUp):
        return f"stopped: {event.why}"
    return f"connection ended: {event.why}"


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (but line feed and
    tab) shown as ``\\uXXXX`` escapes, so a message cannot drive the terminal."""
    return "".join(c if c.isprintable() or c in "\n\t" else f"\\u{ord(c):04x}" for c in text)


def describe_received(event: Received) -> str:
    """A received message: its text and attachments once it verified, never
    the text of one that did not (FAILED TO VERIFY and why)."""
    where = f"message {event.message} from {event.sender}"
    if event.content is None:
        return f"{where}: ack of {event.ack}"
    if event.refused is not None:
        return f"{where}: FAILED TO VERIFY ({printable(str(event.refused))}); not shown"
    opened = event.opened
    if opened is None:
        return f"{where}: not opened ({len(event.content)} octets)"
    if event.repeat_of is not None:
        return f"{where}: repeat of message {event.repeat_of}, not shown again"
    sender = f"{opened.sender} ({event.account})" if event.account else opened.sender
    lines = [f"message {event.message} from {sender}: {printable(opened.body.text)}"]
    for item in opened.body.attachments:
        lines.append(
            f"  attachment {printable(item.name)} ({item.media_type}, {len(item.data)} octets)"
        )
    return "\n".join(lines)


def read_attachment(path: str) -> Attachment:
    """An attachment from a file: its base name, a media type guessed from it
    (else application/octet-stream), its octets (at most MAX_CONTENT).

    @raise OSError: unreadable. @raise PayloadError: too large, or a name
        that cannot be an attachment's.
    """
    with open(path, "rb") as f:
        data = f.read(MAX_CONTENT + 1)
    if len(data) > MAX_CONTENT:
        raise PayloadError("too-large", f"{path} is over {MAX_CONTENT} octets")
    name = os.path.basename(path)
    media_type = mimetypes.guess_type(name, strict=False)[0] or "application/octet-stream"
    return Attachment(name, media_type, data)


def attach_main(reactor: IReactor, args: argparse.Namespace, out: IO[str]) -> defer.Deferred[None]:
    material: KeyMaterial = args.material
    servers, names = expand_servers(args.server)
    host, port = servers[0]

    finished: defer.Deferred[None] = defer.Deferred()

    def show(event: Event) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write(f"{stamp} {describe(event)}\n")
        out.flush()
        if isinstance(event, GaveUp) and not finished.called:
            finished.errback(SystemExit(1))  # exit status 1: the URI is in use elsewhere

    client = AttachingClient(
        reactor,
        tls_connector(reactor, args.ca, args.insecure, names=names),
        session_maker(material, args.app),
        host,
        port,
        show,
        servers=tuple(servers),
    )
    where = ", ".join(f"{h}:{p}" for h, p in servers)
    out.write(f"attaching {material.uri} ({material.account}) to {where}\n")
    client.start()

    def shutdown() -> defer.Deferred[None]:
        d = client.stop()
        d.addBoth(lambda _: finished.callback(None) if not finished.called else None)
        return d

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    return finished


def _printer(out: IO[str]) -> Callable[[PhoneEvent], None]:
    def show(event: PhoneEvent) -> None:
        if isinstance(event, Answered | Incoming):
            return  # the call and message events say it better
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        out.write(f"{stamp} {describe(event)}\n")
        out.flush()

    return show


def make_phone(
    reactor: IReactor, args: argparse.Namespace, out: IO[str], fetch_on_attach: bool = False
) -> Phone:
    servers, names = expand_servers(args.server)
    host, port = servers[0]
    return Phone(
        reactor,
        args.material,
        tls_connector(reactor, args.ca, args.insecure, names=names),
        session_maker(args.material, args.app),
        host,
        port,
        _printer(out),
        servers=servers,
        play=args.samples,
        loop_play=args.loop,
        codecs=getattr(args, "codecs", None) or (),
        domains=getattr(args, "domains", None) or {},
        fetch_on_attach=fetch_on_attach,
    )


async def _within(reactor: IReactor, d: defer.Deferred[T], seconds: float | None) -> T | None:
    """What ``d`` fires with, or ``None`` after ``seconds``."""
    if seconds is None:
        return await d
    return await d.addTimeout(seconds, reactor, onTimeoutCancel=lambda result, timeout: None)


def _ended(call: Call) -> Callable[[PhoneEvent], bool]:
    return lambda e: isinstance(e, CallEvent) and e.call is call and e.kind == END


def _save(args: argparse.Namespace, phone: Phone, call: Call, out: IO[str], n: int = 1) -> None:
    digits = phone.dtmf_received(call)
    if digits:
        out.write(f"dtmf received: {digits}\n")
        out.flush()
    if not args.record:
        return
    path = args.record
    if n > 1:
        stem, ext = os.path.splitext(path)
        path = f"{stem}-{n}{ext or '.wav'}"
    samples = phone.recording(call).samples()
    write_wav(path, samples)
    out.write(f"recorded {len(samples) / 8000:.2f} s to {path}\n")
    out.flush()


async def _attach(reactor: IReactor, phone: Phone) -> bool:
    attached = await _within(reactor, phone.start(), ATTACH_WAIT)
    return attached is not None


async def call_main(reactor: IReactor, args: argparse.Namespace, out: IO[str]) -> int:
    phone = make_phone(reactor, args, out)
    try:
        if not await _attach(reactor, phone):
            out.write("not attached in time\n")
            return 1
        try:
            call = phone.place(args.uri, getattr(args, "to_account", None))
        except CallError as exc:
            out.write(f"cannot call: {exc}\n")
            return 1
        ended = phone.until(_ended(call))
        answered = phone.until(
            lambda e: isinstance(e, CallEvent) and e.call is call and e.kind in (TALK, END)
        )
        first = await answered
        if not isinstance(first, CallEvent) or first.kind == END:
            return 1
        if args.dtmf:
            reactor.callLater(DTMF_DELAY, _send_dtmf, phone, call, args.dtmf, out)
        if await _within(reactor, ended, args.duration) is None:
            phone.hangup(call)
        _save(args, phone, call, out)
        return 0
    finally:
        await phone.stop()


#: Seconds after talk before ``call --dtmf`` sends its digits.
DTMF_DELAY = 0.5


def _send_dtmf(phone: Phone, call: Call, digits: str, out: IO[str]) -> None:
    if call.state != "talk":
        return
    phone.send_dtmf(call, digits)
    out.write(f"dtmf sent: {digits}\n")
    out.flush()


async def answer_main(reactor: IReactor, args: argparse.Namespace, out: IO[str]) -> int:
    phone = make_phone(reactor, args, out)
    try:
        if not await _attach(reactor, phone):
            out.write("not attached in time\n")
            return 1
        event = await phone.until(
            lambda e: isinstance(e, GaveUp) or (isinstance(e, CallEvent) and e.kind == INCOMING)
        )
        if not isinstance(event, CallEvent):  # the client gave up
            return 1
        call = event.call
        ended = phone.until(_ended(call))
        phone.answer(call)
        if await _within(reactor, ended, args.duration) is None:
            phone.hangup(call)
        _save(args, phone, call, out)
        return 0
    finally:
        await phone.stop()


async def listen_main(reactor: IReactor, args: argparse.Namespace, out: IO[str]) -> int:
    phone: Phone | None = None
    count = 0

    def on_event(event: PhoneEvent) -> None:
        nonlocal count
        assert phone is not None
        if not isinstance(event, CallEvent):
            return
        if event.kind == INCOMING and args.auto_answer:
            reactor.callLater(0, phone.answer, event.call)
        elif event.kind == END:
            if phone.recording(event.call).frames:
                count += 1
                _save(args, phone, event.call, out, count)
            phone.forget(event.call)  # listen runs for days: keep nothing per call

    phone = make_phone(reactor, args, out, fetch_on_attach=True)
    printer = phone.on_event

    def both(event: PhoneEvent) -> None:
        if printer is not None:
            printer(event)
        on_event(event)
        if isinstance(event, GaveUp) and not finished.called:
            finished.callback(1)

    phone.on_event = both
    phone.start()
    finished: defer.Deferred[int] = defer.Deferred()

    def shutdown() -> defer.Deferred[None]:
        d = phone.stop()
        d.addBoth(lambda _: finished.callback(0) if not finished.called else None)
        return d

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    return await finished


async def send_main(reactor: IReactor, args: argparse.Namespace, out: IO[str]) -> int:
    phone = make_phone(reactor, args, out)
    key = new_message_key()
    # Sealed once: every attempt posts the same octets with the same key.
    body = MessageBody(args.text, args.attachments)
    try:
        content = phone.crypto.seal(
            args.uri, body, reactor.seconds(), to_account=getattr(args, "to_account", None)
        )
    except PayloadError as exc:
        out.write(f"cannot send: {exc}\n")
        return 1
    try:
        if not await _attach(reactor, phone):
            out.write("not attached in time\n")
            return 1
        posted = await _post(
            reactor, phone, args.uri, content, key, getattr(args, "to_account", None)
        )
        if posted is None or posted.error is not None:
            return 1
        if args.wait:
            await phone.until(lambda e: isinstance(e, Receipt) and e.message == posted.message)
        return 0
    finally:
        await phone.stop()


#: Attempts of one post (the same message, the same key) before ``send`` gives up.
SEND_ATTEMPTS = 8
#: Longest pause between two attempts, seconds.
SEND_PAUSE_MAX = 10.0


async def _post(
    reactor: IReactor,
    phone: Phone,
    to: str,
    content: bytes,
    key: bytes,
    to_account: str | None = None,
) -> Posted | None:
    """Post one message until the CRS stores it: retried with the same key after
    ``error unavailable`` (or ``internal``) and after a lost connection."""
    answer: PhoneEvent | None = None
    for _attempt in range(SEND_ATTEMPTS):
        if not phone.messenger.attached:
            if await _within(reactor, phone.until(_is_attached), ATTACH_WAIT) is None:
                break
        request = phone.post(to, content, key, to_account)
        answer = await phone.until(_answer_to(request))
        if isinstance(answer, Posted) and not answer.retryable:
            return answer
        if isinstance(answer, Posted):
            pause = min((answer.retry_after or 1000) / 1000, SEND_PAUSE_MAX)
            await deferLater(reactor, pause, lambda: None)
    return answer if isinstance(answer, Posted) else None


def _answer_to(request: int) -> Callable[[PhoneEvent], bool]:
    """The post's answer, or the end of the connection it went on."""
    return lambda e: (
        (isinstance(e, Posted) and e.request_id == request) or isinstance(e, ConnectionEnded)
    )


def _is_attached(event: PhoneEvent) -> bool:
    return isinstance(event, Attached)


MAINS = {"call": call_main, "answer": answer_main, "listen": listen_main, "send": send_main}


def run(argv: Sequence[str], out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Run with ``argv`` (without the program name); return the exit status."""
    if not argv or argv[0] in ("help", "-h", "--help"):
        out.write(HELP)
        return 0
    if argv[0] not in ACTIONS:
        err.write(HELP)
        err.write(f"cryptify-client: error: unknown action {argv[0]!r}\n")
        return 2
    parser = build_parser()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return int(exc.code or 2)
    try:
        args.material = load_key_material(args.keys)
    except (OSError, CryptoError) as exc:
        err.write(f"cryptify-client: cannot use key file {args.keys}: {exc}\n")
        return 1
    try:
        args.domains = by_account(
            (load_domain(path) for path in args.peer_domain), own=args.material.account
        )
    except DomainFileError as exc:
        err.write(f"cryptify-client: cannot use --peer-domain: {exc}\n")
        return 1
    try:
        for host, _ in args.server:
            client_context_factory(host, args.ca, verify=not args.insecure)
    except TLSConfigError as exc:
        err.write(f"cryptify-client: {exc}\n")
        return 1
    args.attachments = ()
    if getattr(args, "attach", None):
        try:
            args.attachments = tuple(read_attachment(path) for path in args.attach)
        except (OSError, PayloadError) as exc:
            err.write(f"cryptify-client: cannot attach: {exc}\n")
            return 1
    args.samples, args.loop = (), False
    if getattr(args, "play", None):
        try:
            args.samples = read_wav(args.play)
        except (OSError, AudioError) as exc:
            err.write(f"cryptify-client: cannot play {args.play}: {exc}\n")
            return 1
        if getattr(args, "duration", 0) is None and args.action == "call":
            args.duration = max(len(args.samples) / 8000, 0.1)
    elif getattr(args, "tone", None):
        args.samples, args.loop = tone(args.tone, 1.0), True
    if getattr(args, "duration", 0) is None and args.action == "call":
        args.duration = 10.0
    from twisted.internet import reactor, task

    del reactor
    if args.action == "attach":
        task.react(lambda r: attach_main(r, args, out))
        return 0  # pragma: no cover  (react exits)
    main_of = MAINS[args.action]

    async def main(r: IReactor) -> None:
        status = await main_of(r, args, out)
        if status:
            raise SystemExit(status)

    task.react(lambda r: defer.ensureDeferred(main(r)))
    return 0  # pragma: no cover  (react exits)


def main() -> None:
    """Console script entry point."""
    from cryptify.console import console_main

    console_main(lambda out: run(sys.argv[1:], out))


__all__ = ["ConnectionEnded", "main", "run"]
