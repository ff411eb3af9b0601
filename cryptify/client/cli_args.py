"""``cryptify-client``'s command line: its actions, options and manual page.

The actions themselves are in :mod:`cryptify.client.cli`.
"""

from __future__ import annotations

import argparse
import re

from cryptify import __version__
from cryptify.client.media import MAX_DTMF_QUEUE, supported_codecs
from cryptify.client.servers import (
    parse_server,
)
from cryptify.protocols.rtp import DTMF_DIGITS
from cryptify.tools.manpage import Page, actions_from_parser

ACTIONS = ("attach", "call", "answer", "listen", "send")
COMMON = "--keys FILE --server HOST:PORT [--ca FILE | --insecure]"
HELP = f"""\
usage: cryptify-client ACTION [options]

The reference secure client of the Cryptify system.

actions:
  attach --keys FILE --server HOST:PORT [--ca FILE | --insecure] [--app VERSION]
                attach to a CRS and stay attached (Ctrl-C or SIGTERM detaches)
  call URI {COMMON}
       [--play F.wav | --tone HZ] [--record F.wav] [--duration S] [--dtmf DIGITS]
                call URI, talk for S seconds (default: the --play file's
                length, else 10), hang up; exits when either side hangs up;
                --dtmf sends the digits (RFC 4733) half a second into the call
  answer {COMMON}
       [--play F.wav | --tone HZ] [--record F.wav] [--duration S]
                wait for the next call, answer it, stay until it ends
                (or hang up after S seconds)
  listen {COMMON}
       [--auto-answer] [--play F.wav | --tone HZ] [--record F.wav]
                print incoming messages and calls until Ctrl-C; answer calls
                with --auto-answer (recordings: F.wav, F-2.wav, ...)
  send URI TEXT {COMMON} [--attach FILE]... [--wait]
                post a message, sealed end to end, with the files attached
                (--wait: until the recipient confirms it)
  help          show this help
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys", required=True, metavar="FILE", help="key material file (cryptify-kms issue)"
    )
    parser.add_argument(
        "--server",
        required=True,
        action="append",
        type=parse_server,
        metavar="HOST:PORT",
        help="CRS HOST:PORT; repeat it (or give a name with several addresses) for a pool:"
        " after a lost connection the client tries the next one",
    )
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument(
        "--ca", metavar="FILE", help="PEM file of the CA (or self-signed certificate) to trust"
    )
    trust.add_argument("--insecure", action="store_true", help="accept any certificate (dev)")
    parser.add_argument(
        "--app", default=f"cryptify-client/{__version__}", metavar="VERSION", help="version shown"
    )
    parser.add_argument(
        "--peer-domain",
        action="append",
        default=[],
        metavar="FILE",
        help="another security domain's public KMS parameters (cryptify-kms export); repeatable",
    )


def _account(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,20}", text):
        raise argparse.ArgumentTypeError(
            f"expected an account id ([A-Za-z0-9_-]{{1,20}}), got {text!r}"
        )
    return text


def _to_account(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--to-account",
        type=_account,
        metavar="ACCOUNT",
        help="the other party's account (security domain), when another operator hosts it",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"seconds out of range: {text!r}")
    return value


def _hertz(text: str) -> float:
    value = _seconds(text)
    if not 20 <= value <= 3900:
        raise argparse.ArgumentTypeError("a tone of 20..3900 Hz")
    return value


def _digits(text: str) -> str:
    text = text.upper()
    if not text or len(text) > MAX_DTMF_QUEUE or any(c not in DTMF_DIGITS for c in text):
        raise argparse.ArgumentTypeError(
            f"expected 1-{MAX_DTMF_QUEUE} DTMF digits (0-9 * # A-D), got {text!r}"
        )
    return text


def _codecs(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = {c.lower(): c for c in supported_codecs()}
    if not names or any(n.lower() not in known for n in names):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(supported_codecs())}, got {text!r}"
        )
    return tuple(dict.fromkeys(known[n.lower()] for n in names))


def _audio(parser: argparse.ArgumentParser, duration: bool = True) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--play", metavar="F.wav", help="WAV file to send (then silence)")
    source.add_argument("--tone", metavar="HZ", type=_hertz, help="send a sine tone")
    parser.add_argument("--record", metavar="F.wav", help="write what the other side sends")
    parser.add_argument(
        "--codecs",
        metavar="LIST",
        type=_codecs,
        help="media codecs to offer and accept, most preferred first (opus,PCMU);"
        " default G.711 u-law (PCMU) only",
    )
    if duration:
        parser.add_argument("--duration", metavar="S", type=_seconds, help="hang up after S s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cryptify-client", add_help=False)
    sub = parser.add_subparsers(dest="action")
    attach = sub.add_parser("attach", help="attach and stay attached")
    _common(attach)
    call = sub.add_parser("call", help="place a call")
    call.add_argument("uri", metavar="URI", help="tel:+NUMBER to call")
    _common(call)
    _audio(call)
    call.add_argument("--dtmf", metavar="DIGITS", type=_digits, help="send DTMF once talking")
    _to_account(call)
    answer = sub.add_parser("answer", help="answer the next call")
    _common(answer)
    _audio(answer)
    listen = sub.add_parser("listen", help="print messages and calls")
    _common(listen)
    _audio(listen, duration=False)
    listen.add_argument("--auto-answer", action="store_true", help="answer every call")
    send = sub.add_parser("send", help="post a message")
    send.add_argument("uri", metavar="URI", help="tel:+NUMBER to send to")
    send.add_argument("text", metavar="TEXT", help="the message")
    _common(send)
    send.add_argument(
        "--attach",
        metavar="FILE",
        action="append",
        default=[],
        help="attach a file (repeatable; all within the 48 KiB of a message)",
    )
    send.add_argument("--wait", action="store_true", help="wait for the delivery receipt")
    _to_account(send)
    return parser


def manual_page() -> Page:
    """cryptify-client(1), from the parser."""
    return Page(
        name="cryptify-client",
        section=1,
        summary="the reference secure client of the Cryptify system",
        synopsis=("ACTION [ARGUMENTS] --keys FILE --server HOST:PORT [--ca FILE | --insecure]",),
        description=(
            "cryptify-client attaches the URI of a key material file (cryptify-kms issue) "
            "to a CRS and places and answers secure calls (MIKEY-SAKKE keys, SRTP media "
            "through the CRS relay), playing and recording WAV files, and posts and "
            "receives messages. It prints one line per event.\n\n"
            "attach stays attached, reconnecting with backoff when the connection ends, "
            "until Ctrl-C or SIGTERM (then it detaches)."
        ),
        actions=actions_from_parser(build_parser()),
        exit_status=(
            ("0", "done"),
            ("1", "a key file, audio file or TLS setting cannot be used, or the action failed"),
            ("2", "bad arguments"),
        ),
        see_also=("cryptify-kms(1)", "crs-cli(8)"),
    )
