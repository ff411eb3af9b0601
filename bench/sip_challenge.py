"""Digest challenge benchmark: the CIG's cost of checking its PBX's credentials.

    .venv/bin/python bench/sip_challenge.py [--count 20000]

In one process, without I/O: a L{Challenger} with one C{pbx_challenge}
block answers C{--count} requests without credentials (a 401 with two
fresh nonces) and checks C{--count} valid answers each for SHA-256 and
MD5 (parse, nonce HMAC, digest, nonce-count record). Prints one JSON
line with the CPU microseconds per operation (process time, so a loaded
machine slows it less than wall time would).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet.task import Clock  # noqa: E402

from cryptify.cig.sif.challenge import Challenger, load_guard  # noqa: E402
from cryptify.config.cig_model import PbxChallenge  # noqa: E402
from cryptify.protocols.sip.digest import (  # noqa: E402
    Challenge,
    Credentials,
    authorization,
)
from cryptify.protocols.sip.headers import Headers  # noqa: E402
from cryptify.protocols.sip.message import Request  # noqa: E402

URI = "sip:94670123456@192.0.2.9:5060"
PEER = "192.0.2.1"


def request(*auth: str) -> Request:
    headers = Headers(
        (
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKx"),
            ("From", "<sip:101@pbx.example>;tag=f1"),
            ("To", f"<{URI}>"),
            ("Call-ID", "c1"),
            ("CSeq", "1 INVITE"),
            *(("Authorization", value) for value in auth),
        )
    )
    return Request("INVITE", URI, headers)


def cpu_per(challenger: Challenger, requests: list[Request]) -> float:
    """CPU microseconds per check of each of C{requests}."""
    start = time.process_time()
    for each in requests:
        challenger.check(each, PEER)
    return (time.process_time() - start) / len(requests) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    count = parser.parse_args().count
    clock = Clock()
    clock.advance(1_700_000_000)
    block = PbxChallenge("192.0.2.0/24", "cig.example", "pbx", password="bench-Secret")
    challenger = Challenger(clock, (load_guard(block),), max_nonces=count * 4)
    creds = Credentials("pbx", "bench-Secret")
    bare = request()
    result: dict[str, float | int] = {"count": count}
    result["challenge_us"] = round(cpu_per(challenger, [bare] * count), 2)
    for algorithm in ("SHA-256", "MD5"):
        answers = []
        for _ in range(count):
            nonce = challenger.nonce(PEER, "cig.example")
            found = Challenge("WWW-Authenticate", "cig.example", nonce, algorithm, ("auth",))
            answers.append(request(authorization(found, creds, "INVITE", URI)))
        key = f"verify_{algorithm.lower().replace('-', '')}_us"
        result[key] = round(cpu_per(challenger, answers), 2)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
