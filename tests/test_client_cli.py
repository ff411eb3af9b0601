"""cryptify-client call / answer / listen / send: the command line, without a reactor."""

from __future__ import annotations

import io
import os

from twisted.trial.unittest import SynchronousTestCase

from cryptify.client import cli
from cryptify.client.calls import END, INCOMING, Call, CallEvent
from cryptify.client.messages import Posted, Receipt, Received
from cryptify.crypto.keymaterial import write_key_material
from tests.fakes import material


class ArgumentTests(SynchronousTestCase):
    """Bad arguments are usage errors (2); unusable files are errors (1)."""

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cli.run(list(argv), out, err)
        return status, out.getvalue(), err.getvalue()

    def test_help_lists_actions(self) -> None:
        """help names every action."""
        status, out, _ = self.run_cli("help")
        self.assertEqual(status, 0)
        for action in ("call URI", "answer", "listen", "send URI TEXT", "--auto-answer"):
            self.assertIn(action, out)

    def test_usage_errors(self) -> None:
        """Missing URI or --keys, bad --duration/--tone/--dtmf, --play and --tone: exit 2."""
        common = ("--keys", "k", "--server", "h:1", "--insecure")
        for argv in (
            ("call", *common),
            ("call", "tel:+1", "--server", "h:1"),
            ("call", "tel:+1", *common, "--duration", "soon"),
            ("call", "tel:+1", *common, "--duration", "-1"),
            ("answer", *common, "--tone", "9000"),
            ("answer", *common, "--play", "a.wav", "--tone", "1000"),
            ("listen", *common, "--duration", "3"),
            ("send", "tel:+1", *common),
            ("send", "tel:+1", "hi", "--keys", "k", "--server", "nohost"),
            ("call", "tel:+1", *common, "--ca", "x"),
            ("call", "tel:+1", *common, "--dtmf", "12x"),
            ("call", "tel:+1", *common, "--dtmf", ""),
            ("answer", *common, "--dtmf", "1"),
        ):
            status, _, err = self.run_cli(*argv)
            self.assertEqual(status, 2, argv)
            self.assertIn("usage:", err)

    def test_unreadable_wav(self) -> None:
        """A --play file that is not a WAV: exit 1 naming it."""
        keys = os.path.join(self.mktemp())
        write_key_material(keys, material("tel:+461111"))
        bad = self.mktemp()
        with open(bad, "wb") as f:
            f.write(b"not a wav")
        status, _, err = self.run_cli(
            "call", "tel:+462222", "--keys", keys, "--server", "h:1", "--insecure", "--play", bad
        )
        self.assertEqual(status, 1)
        self.assertIn(bad, err)

    def test_missing_keys(self) -> None:
        """A key file that cannot be read: exit 1."""
        status, _, err = self.run_cli("send", "tel:+1", "hi", "--keys", "/nonexistent/k",
                                      "--server", "h:1", "--insecure")  # fmt: skip
        self.assertEqual(status, 1)
        self.assertIn("/nonexistent/k", err)


class DescribeTests(SynchronousTestCase):
    """Call and message events print as one line each."""

    def test_calls(self) -> None:
        """Incoming and ended calls."""
        call = Call("tel:+461111", False, "ringing", b"", session="s1")
        self.assertEqual(
            cli.describe(CallEvent(INCOMING, call)), "call s1 from tel:+461111: incoming"
        )
        call.code, call.who, call.reason = "normal", "caller", "bye"
        self.assertEqual(
            cli.describe(CallEvent(END, call)),
            "call s1 from tel:+461111 ended: normal by caller (bye)",
        )

    def test_messages(self) -> None:
        """Posted, refused, received (content or ack) and delivered."""
        self.assertEqual(cli.describe(Posted(3, "m1")), "posted message m1")
        self.assertEqual(cli.describe(Posted(3, None, "not-found")), "message 3 refused: not-found")
        got = Received("m2", "tel:+1", "tel:+2", 0, "héllo".encode(), None)
        self.assertEqual(cli.describe(got), "message m2 from tel:+1: not opened (6 octets)")
        ack = Received("m3", "tel:+1", "tel:+2", 0, None, "m2")
        self.assertEqual(cli.describe(ack), "message m3 from tel:+1: ack of m2")
        self.assertEqual(cli.describe(Receipt("m1")), "delivered message m1")
