"""
Where RFC 4475's SIP torture messages are: C{../shared/sip-torture/rfc4475}
next to the checkout, read in place and never copied.  A clone made from
such a checkout (C{git clone /work/main /root/x}, as CI and reviewers do)
looks next to the repository it was cloned from as well, found through its
own C{origin} remote, and then beside each directory above the two (a bare
origin sits a level deeper), so the corpus follows the checkout, not a
machine path.  A test that needs it and finds it nowhere fails, naming
where it looked first, rather than being skipped.
"""

from __future__ import annotations

import os
import re
import subprocess

import attrs
from twisted.trial.unittest import FailTest

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The corpus, relative to a checkout.
_RELATIVE = os.path.join("shared", "sip-torture", "rfc4475")
#: The corpus next to this checkout.
TORTURE = os.path.join(os.path.dirname(_CHECKOUT), _RELATIVE)


def _origin() -> str | None:
    """The local directory this checkout was cloned from, if it was."""
    try:
        done = subprocess.run(
            ["git", "-C", _CHECKOUT, "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    url = done.stdout.strip()
    if url.startswith("file://"):
        url = url[len("file://") :]
    return url if url.startswith("/") and os.path.isdir(url) else None


def torture_places() -> list[str]:
    """Where the corpus is looked for, in order: beside the checkout, beside
    the origin it was cloned from, then beside each directory above them (a
    bare origin a level deeper, say)."""
    bases = [_CHECKOUT]
    origin = _origin()
    if origin is not None:
        bases.append(os.path.abspath(origin))
    parents = [os.path.dirname(base) for base in bases]
    for parent in list(parents):
        while os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
            parents.append(parent)
    places: list[str] = []
    for parent in parents:
        place = os.path.join(parent, _RELATIVE)
        if place not in places:
            places.append(place)
    return places


def torture_dir() -> str:
    """The corpus directory; if it is nowhere, the test fails and says where it belongs."""
    places = torture_places()
    for place in places:
        if os.path.isdir(place):
            return place
    raise FailTest(
        f"RFC 4475 torture messages not found at {' or '.join(places[:3])}: they belong in"
        " ../shared/sip-torture/rfc4475 next to the checkout (or next to the repository"
        " it was cloned from)"
    )


def torture_files() -> list[tuple[str, bytes]]:
    """Every file of the corpus, by name, with its bytes."""
    directory = torture_dir()
    files = []
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            files.append((name, f.read()))
    return files


#: Where an answer must arrive (RFC 3261 18.2.2, RFC 3581): "5060" and
#: "5050" are the source address at that port (the sent-by port, or 5060
#: when the Via names none); "source" is the source address and port (the
#: Via asks for rport, or cannot be read at all).
Where = str


@attrs.frozen
class Treatment:
    """What RFC 4475 says a UAS does with one message, in the test config."""

    section: str
    #: The final status, or None when nothing is answered (a response).
    final: int | None
    where: Where = "5060"
    why: str = ""


ROUTED = "parsed and processed: routed, no extension map entry takes it"
#: Every RFC 4475 message, by file name. "Processed" INVITEs end in the
#: routing outcome of the test configurations (404: no map entry takes
#: them; inv2543's number is mapped and the call is answered, 200).
TREATMENTS = {
    "wsinv": Treatment("3.1.1.1", 481, why="parsed; its To tag names a dialog that does not exist"),
    "intmeth": Treatment("3.1.1.2", 501, why="parsed; an unknown method"),
    "esc01": Treatment("3.1.1.3", 404, why=ROUTED),
    "escnull": Treatment("3.1.1.4", 405, why="parsed; REGISTER is not taken"),
    "esc02": Treatment("3.1.1.5", 501, why="RE%47IST%45R is an unknown method, not REGISTER"),
    "lwsdisp": Treatment("3.1.1.6", 200, why="parsed and answered"),
    "longreq": Treatment("3.1.1.7", 404, why=ROUTED),
    "dblreq": Treatment(
        "3.1.1.8", 405, why="the REGISTER is answered, the trailing INVITE ignored"
    ),
    "semiuri": Treatment("3.1.1.9", 200, why="parsed and answered"),
    "transports": Treatment("3.1.1.10", 200, why="parsed and answered"),
    "mpart01": Treatment("3.1.1.11", 404, "source", "a MESSAGE routed (rport: to the source)"),
    "unreason": Treatment("3.1.1.12", None, why="a response matching no transaction"),
    "noreason": Treatment("3.1.1.13", None, why="a response matching no transaction"),
    "badinv01": Treatment("3.1.2.1", 400, "source", "its Via cannot be read"),
    "clerr": Treatment("3.1.2.2", 400, why="body shorter than Content-Length"),
    "ncl": Treatment("3.1.2.3", 400, why="negative Content-Length"),
    "scalar02": Treatment("3.1.2.4", 400, why="CSeq number too large"),
    "scalarlg": Treatment("3.1.2.5", None, why="a response is discarded"),
    "quotbal": Treatment("3.1.2.6", 400, "5050", "unterminated quoted string"),
    "ltgtruri": Treatment("3.1.2.7", 400, why="<> around the Request-URI"),
    "lwsruri": Treatment("3.1.2.8", 400, why="white space inside the Request-URI"),
    "lwsstart": Treatment("3.1.2.9", 400, why="several SP in the request line"),
    "trws": Treatment("3.1.2.10", 400, why="SP after the SIP version"),
    "escruri": Treatment("3.1.2.11", 400, why="headers in the Request-URI"),
    "baddate": Treatment("3.1.2.12", 404, why="the Date is not needed, so ignored; " + ROUTED),
    "regbadct": Treatment("3.1.2.13", 405, why="read liberally; REGISTER is not taken"),
    "badaspec": Treatment("3.1.2.14", 400, why="spaces inside the addr-spec"),
    "baddn": Treatment("3.1.2.15", 400, why="display name that is not a token or quoted"),
    "badvers": Treatment("3.1.2.16", 505, "source", "SIP/7.0 (its Via cannot be read either)"),
    "mismatch01": Treatment("3.1.2.17", 400, why="CSeq method differs from the request's"),
    "mismatch02": Treatment("3.1.2.18", 400, why="CSeq method differs: 400, not 501"),
    "bigcode": Treatment("3.1.2.19", None, why="a response is discarded"),
    "badbranch": Treatment("3.2.1", 200, why="branch without an id: matched as RFC 2543"),
    "insuf": Treatment("3.3.1", 400, why="no From, To or Call-ID"),
    "unkscm": Treatment("3.3.2", 416, why="unknown Request-URI scheme"),
    "novelsc": Treatment("3.3.3", 416, why="a scheme the CIG does not serve"),
    "unksm2": Treatment("3.3.4", 405, why="parsed; REGISTER is not taken"),
    "bext01": Treatment("3.3.5", 420, why="Require of unknown options (Proxy-Require ignored)"),
    "invut": Treatment("3.3.6", 415, why="body type the CIG does not take"),
    "regaut01": Treatment("3.3.7", 405, why="parsed; REGISTER is not taken"),
    "multi01": Treatment("3.3.8", 400, why="several values in single-value fields"),
    "mcl01": Treatment("3.3.9", 400, why="two Content-Length values"),
    "bcast": Treatment("3.3.10", None, why="a response is discarded"),
    "zeromf": Treatment("3.3.11", 200, why="Max-Forwards 0 at the UAS: processed"),
    "cparam01": Treatment("3.3.12", 405, why="parsed; REGISTER is not taken"),
    "cparam02": Treatment("3.3.13", 405, why="parsed; REGISTER is not taken"),
    "regescrt": Treatment("3.3.14", 405, why="parsed; REGISTER is not taken"),
    "sdp01": Treatment("3.3.15", 406, why="Accept without application/sdp"),
    "inv2543": Treatment("3.4.1", 200, why="RFC 2543 INVITE (no tags, branch or Contact) answered"),
}


def read_torture(name: str) -> bytes:
    """The message C{name} (file name without .dat), as bytes."""
    with open(os.path.join(torture_dir(), name + ".dat"), "rb") as f:
        return f.read()


#: The maps of the CIG the torture tests run against: PBX users dial 9 or
#: + and a number; the PBX is 127.0.0.1 (where the messages come from).
TORTURE_MAPS = """
map sip2tel {
    entry nine
        sip "sip:9{n}@{host}"
        tel "tel:+{n}";
    entry plus
        sip "sip:+{n}@{host}"
        tel "tel:+{n}";
}
map telsrc {
    entry all
        sip "sip:{user}@{host}"
        tel "tel:+8888;{user}";
}
map tel2sip {
    entry pbx
        tel "tel:+8888;{ext}"
        sip "sip:{ext}@127.0.0.1";
}
"""


_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def call_id_of(name: str) -> str:
    """The first Call-ID of message C{name} as written ('' if it has none)."""
    m = _CALL_ID.search(read_torture(name).split(b"\r\n\r\n", 1)[0])
    return m.group(1).decode("utf-8", "replace") if m else ""


#: Messages that share their top Via's branch and sent-by, and method, with
#: an earlier one (escnull, cparam01): RFC 3261 17.2.3 would match them to
#: that one's transaction as retransmissions, so they go to a fresh CIG.
SAME_TRANSACTION_AS_EARLIER = ("regescrt", "cparam02")
