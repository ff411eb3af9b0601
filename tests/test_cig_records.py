"""cryptify.cig.records: one JSON line per call, its file, and the calls that write it.

Calls run in memory: the real SIF (fake channel) and UMSG tel side, a
cig-relay link whose BridgeRemove answers counters, twisted's Clock.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.calls import Call, CallState, CallTable
from cryptify.cig.records import (
    MAX_FIELD,
    MEDIA_WAIT,
    CallRecords,
    CallRecordsService,
    iso_time,
    record_line,
    record_of,
)
from cryptify.client.session import Incoming
from cryptify.config import parse_cig_config, render_cig_config
from cryptify.config.cig_model import CigConfig, Logging
from cryptify.ops.cig import DIRECTIVES
from cryptify.ops.reload import Reloader, plan
from cryptify.protocols.bridge_control import BridgeRemove
from cryptify.protocols.sip.message import Request, parse_datagram
from cryptify.protocols.umsg import message
from cryptify.service import StartupError
from tests.cig_support import SifTelCase, StatsBridge

T0 = 1795000000.0  # 2026-11-18T11:06:40Z


def ended_call() -> Call:
    call = Call("tel:+461111", "tel:+8888;101", "sip:9461111@secure.example", "sip:101@pbx.com")
    call.caller_if_id, call.callee_if_id, call.source = "s1", "abc@192.0.2.9", "umsg"
    call.started_at, call.answered_at, call.ended_at = T0, T0 + 3.25, T0 + 63.5
    call.note_end("secure", "normal")
    call.codec = "PCMA"
    call.octets_to_pbx, call.octets_from_pbx = 516000, 517720
    return call


class RecordTests(SynchronousTestCase):
    def test_fields(self) -> None:
        """A call to the PBX: ids per interface, parties as routed, times in
        UTC, duration from answer to end, who ended it, codec, octets."""
        record = record_of(ended_call())
        self.assertEqual(
            record,
            {
                "sip_call_id": "abc@192.0.2.9",
                "umsg_session": "s1",
                "direction": "to-pbx",
                "from": "tel:+461111",
                "to": "tel:+8888;101",
                "routed_from": "sip:9461111@secure.example",
                "routed_to": "sip:101@pbx.com",
                "source": "umsg",
                "start": "2026-11-18T11:06:40.000Z",
                "answer": "2026-11-18T11:06:43.250Z",
                "end": "2026-11-18T11:07:43.500Z",
                "duration": 60.25,
                "result": "answered",
                "ended_by": "secure",
                "reason": "normal",
                "codec": "PCMA",
                "octets_to_pbx": 516000,
                "octets_from_pbx": 517720,
            },
        )

    def test_unanswered_from_pbx(self) -> None:
        """A call from the PBX that was refused: no answer, duration 0, the
        SIP Call-ID is the caller's id, unknowns are null."""
        call = Call("sip:101@pbx.com", "sip:9461111@secure.com", "tel:+8888;101", "tel:+461111")
        call.caller_if_id, call.source = "c1", "udp:192.0.2.1:5060"
        call.started_at = call.ended_at = T0
        call.note_end("secure", "SIP 486")
        call.note_end("pbx", "BYE")  # the first report counts
        record = record_of(call)
        self.assertEqual(
            (record["direction"], record["sip_call_id"], record["umsg_session"]),
            ("from-pbx", "c1", None),
        )
        self.assertEqual((record["answer"], record["duration"]), (None, 0.0))
        self.assertEqual((record["ended_by"], record["reason"]), ("secure", "SIP 486"))
        self.assertEqual((record["codec"], record["octets_to_pbx"]), (None, None))
        self.assertEqual(record["result"], "not answered")

    def test_iso_time_rounds_into_the_next_second(self) -> None:
        self.assertEqual(iso_time(T0 + 0.9996), "2026-11-18T11:06:41.000Z")
        self.assertIsNone(iso_time(None))

    @given(st.text(max_size=2000), st.text(max_size=2000), st.text(max_size=300))
    def test_hostile_fields_stay_one_line(self, uri: str, other: str, reason: str) -> None:
        """Whatever a PBX or client puts in a URI or id, the record is one
        line of ASCII JSON that reads back, each field cut to MAX_FIELD."""
        call = Call(uri, other, uri, other, caller_if_id=other, source=uri)
        call.started_at = call.ended_at = T0
        call.note_end("pbx", reason)
        line = record_line(call)
        self.assertNotIn("\n", line)
        self.assertTrue(line.isascii())
        back = json.loads(line)
        self.assertEqual(back["from"], None if uri == "-" else uri[:MAX_FIELD])
        self.assertLessEqual(len(back["reason"]), MAX_FIELD)


class FileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "calls.json")
        self.records = CallRecords(self.clock, self.path)
        self.addCleanup(self.records.close)

    def lines(self, path: str | None = None) -> list[dict[str, Any]]:
        with open(path or self.path) as f:
            return [json.loads(line) for line in f]

    def end(self, call: Call) -> None:
        self.records.ended(call)
        self.clock.advance(0)

    def test_created_0640_and_appended(self) -> None:
        """A new file is 0640; each ended call adds one line, once."""
        self.records.open()
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o640)
        call = ended_call()
        self.end(call)
        self.end(call)
        self.records.ended(ended_call())
        self.records.ended(ended_call())
        self.clock.advance(0)
        self.assertEqual(len(self.lines()), 3)
        self.assertEqual(self.records.written, 3)

    def test_existing_file_loses_other_permissions(self) -> None:
        """An existing 0666 file is narrowed to 0640; a 0600 one stays 0600."""
        for before, after in ((0o666, 0o640), (0o600, 0o600)):
            with open(self.path, "w"):
                pass
            os.chmod(self.path, before)
            self.records.reopen()
            self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), after)

    def test_symlink_refused(self) -> None:
        """A symbolic link in the file's place stops start-up, naming the file."""
        os.symlink(os.path.join(self.dir, "elsewhere"), self.path)
        with self.assertRaises(StartupError) as raised:
            CallRecordsService(self.records).privilegedStartService()
        self.assertIn(self.path, str(raised.exception))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "elsewhere")))

    def test_reopen_after_rotation(self) -> None:
        """logrotate renames the file; after the reopen (SIGHUP) records go
        to a new file at the path, the old one keeps what it had."""
        self.records.open()
        self.end(ended_call())
        rotated = self.path + ".1"
        os.rename(self.path, rotated)
        self.end(ended_call())  # still the renamed file
        self.records.reopen()
        self.end(ended_call())
        self.assertEqual(len(self.lines(rotated)), 2)
        self.assertEqual(len(self.lines()), 1)

    def test_reload_reopens_even_when_the_file_is_refused(self) -> None:
        """The reloader reopens first, so a broken cig.conf does not keep a rotated file."""
        from cryptify.ops.reload import ReloadError

        def broken() -> CigConfig:
            raise ReloadError("cig.conf:1: nonsense")

        self.records.open()
        reloader: Reloader[CigConfig] = Reloader(
            "cig", CigConfig(), DIRECTIVES, broken, lambda p: None
        )
        reloader.reopen.append(self.records.reopen)
        os.rename(self.path, self.path + ".1")
        reloader.reload()
        self.end(ended_call())
        self.assertEqual(len(self.lines()), 1)

    def test_waits_for_the_bridge_counters(self) -> None:
        """A call whose bridge is being removed is written once its counters
        come, or after MEDIA_WAIT seconds without them."""
        self.records.open()
        call = ended_call()
        call.octets_to_pbx = call.octets_from_pbx = None
        call.media_pending = True
        self.end(call)
        self.assertFalse(os.path.getsize(self.path))
        table = CallTable(self.clock, records=self.records)
        table.media_stats(call, {"pbx_tx_octets": 10, "pbx_rx_octets": 20})
        [line] = self.lines()
        self.assertEqual((line["octets_to_pbx"], line["octets_from_pbx"]), (10, 20))
        late = ended_call()
        late.media_pending = True
        self.end(late)
        self.clock.advance(MEDIA_WAIT)
        self.assertEqual(len(self.lines()), 2)
        table.media_stats(late, None)  # too late: nothing more
        self.assertEqual(len(self.lines()), 2)

    def test_syslog_too(self) -> None:
        """With call_records_syslog the same line goes to syslog as well."""
        said: list[str] = []
        self.records.to_syslog, self.records.syslog = True, said.append
        self.records.open()
        call = ended_call()
        self.end(call)
        self.assertEqual(said, [record_line(call)])

    def test_syslog_only(self) -> None:
        """Without a file, syslog alone."""
        said: list[str] = []
        records = CallRecords(self.clock, None, True, said.append)
        records.open()
        records.ended(ended_call())
        self.clock.advance(0)
        self.assertEqual(len(said), 1)

    def test_disabled_keeps_nothing(self) -> None:
        """Neither file nor syslog: nothing waits, nothing is written."""
        records = CallRecords(self.clock)
        records.ended(ended_call())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_configure_moves_the_file(self) -> None:
        """A reload naming another file writes there from then on."""
        self.records.open()
        other = os.path.join(self.dir, "other.json")
        self.records.configure(other, False)
        self.end(ended_call())
        self.assertEqual(len(self.lines(other)), 1)
        self.assertFalse(os.path.getsize(self.path))

    def test_stop_writes_what_waits(self) -> None:
        """At shutdown a record still waiting for counters is written."""
        self.records.open()
        call = ended_call()
        call.media_pending = True
        self.end(call)
        self.records.stop()
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConfigTests(SynchronousTestCase):
    TEXT = 'logging { dir "/var/log/cig"; call_records "/var/log/cig/calls.json"; %s }'

    def test_parsed_and_rendered(self) -> None:
        cfg = parse_cig_config(self.TEXT % "call_records_syslog true;")
        self.assertEqual(
            cfg.logging,
            Logging("/var/log/cig", "/var/log/cig/calls.json", call_records_syslog=True),
        )
        self.assertEqual(parse_cig_config(render_cig_config(cfg)), cfg)
        self.assertIsNone(parse_cig_config('logging { dir "/x"; }').logging.call_records)

    def test_bad_values(self) -> None:
        for bad in ("call_records_syslog maybe;", 'call_records "";', "call_records /x;"):
            with self.assertRaises(Exception, msg=bad):
                parse_cig_config(self.TEXT % bad)

    def test_reload_is_live(self) -> None:
        """Both directives change at a reload without a restart."""
        old = parse_cig_config(self.TEXT % "")
        new = parse_cig_config(
            (self.TEXT % "call_records_syslog true;").replace("calls.json", "cdr.json")
        )
        result = plan(old, new, DIRECTIVES)
        self.assertEqual(
            sorted(d.name for d in result.live),
            ["logging call_records", "logging call_records_syslog"],
        )
        self.assertEqual(result.restart, ())


def pbx_bye(invite: Request) -> bytes:
    """The PBX's BYE in the dialog of our C{invite} it answered with tag pbx1."""
    return (
        "BYE sip:192.0.2.9:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.50:5070;branch=z9hG4bKbye1\r\n"
        f"From: {invite.headers.get('To')};tag=pbx1\r\nTo: {invite.headers.get('From')}\r\n"
        f"Call-ID: {invite.call_id}\r\nCSeq: 7 BYE\r\nMax-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


class CallTests(SifTelCase):
    """Real calls through the SIF and the tel side leave one correct record each."""

    def setUp(self) -> None:
        super().setUp()
        self.said: list[str] = []
        self.calls.records = CallRecords(self.clock, None, True, self.said.append)

    def records(self) -> list[dict[str, Any]]:
        self.clock.advance(0)
        return [json.loads(line) for line in self.said]

    def test_secure_caller_hangs_up(self) -> None:
        """Secure caller -> PBX, answered, the caller hangs up: one record
        with the PBX's codec and the bridge's last octet counts."""
        invite = self.answer_invite()
        self.clock.advance(30)
        self.tel.handle(Incoming(message("hangup", session="s1", code="normal")))
        [record] = self.records()
        self.assertEqual(
            (record["direction"], record["sip_call_id"], record["umsg_session"]),
            ("to-pbx", invite.call_id, "s1"),
        )
        self.assertEqual((record["routed_to"], record["source"]), ("sip:101@pbx.com", "umsg"))
        self.assertEqual((record["ended_by"], record["reason"]), ("secure", "normal"))
        self.assertEqual((record["duration"], record["codec"]), (30.0, "PCMA"))
        self.assertEqual(
            (record["octets_to_pbx"], record["octets_from_pbx"]),
            (StatsBridge.STATS["pbx_tx_octets"], StatsBridge.STATS["pbx_rx_octets"]),
        )

    def test_pbx_rejects(self) -> None:
        """486 from the PBX: not answered, ended by the PBX, no bridge."""
        self.answer_invite((100, 486))
        [record] = self.records()
        self.assertEqual((record["result"], record["ended_by"]), ("not answered", "pbx"))
        self.assertEqual((record["reason"], record["octets_to_pbx"]), ("SIP 486", None))

    def test_pbx_hangs_up_counters_late(self) -> None:
        """The PBX's BYE: the record waits for BridgeRemove's answer."""
        invite = self.answer_invite()
        self.bridge.hold_answers = True
        self.real.message_received(parse_datagram(pbx_bye(invite)), self.channel)
        self.assertIs(self.bridge.sent[-1][0], BridgeRemove)
        self.assertEqual(self.records(), [])
        self.bridge.held[0].callback({"removed": True, "stats": {"pbx_tx_octets": 5}})
        [record] = self.records()
        self.assertEqual((record["ended_by"], record["reason"]), ("pbx", "BYE"))
        self.assertEqual(record["octets_to_pbx"], 5)

    def test_call_from_pbx(self) -> None:
        """PBX -> secure user, the secure user hangs up: from-pbx, the source address."""
        self.pbx_call()
        self.tel.handle(Incoming(message("hangup", session="s9", code="normal")))
        sent = [m for m in self.channel.messages() if isinstance(m, Request)]
        self.assertEqual(sent[-1].method, "BYE")
        [record] = self.records()
        self.assertEqual(
            (record["direction"], record["sip_call_id"], record["umsg_session"]),
            ("from-pbx", "c1", "s9"),
        )
        self.assertEqual(record["source"], "udp:192.0.2.1:5060")
        self.assertEqual((record["ended_by"], record["result"]), ("secure", "answered"))

    def test_refused_keys(self) -> None:
        """An invite whose keys do not verify is still a call record (by the CIG)."""
        bad = message(
            "invite", session="s7", to="tel:+8888;101", mikey=b"junk",
            **{"from": "tel:+461111", "relay-host": "192.0.2.99", "relay-port": 146,
               "relay-tag": b"T" * 8},
        )  # fmt: skip
        self.tel.handle(Incoming(bad))
        [record] = self.records()
        self.assertEqual((record["ended_by"], record["reason"]), ("cig", "bad-keys"))
        self.assertEqual(self.calls.calls[0].state, CallState.REJECT)
