"""cig-cli set-key and the CIG's SetKey responder say what is wrong with bad input."""

from __future__ import annotations

import base64
import io
import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from cryptify.cig.operator import cli as cig_cli
from cryptify.cig.operator.admin import CigAdmin
from cryptify.cig.operator.state import CigState
from cryptify.cig.tel.uif import store_blob
from cryptify.crypto.keymaterial import KeyMaterial
from cryptify.protocols import cig_admin
from cryptify.protocols.mgmt import CommandFailed
from tests.fakes import call, pair

#: Blobs that look a little like key material, and some that do not.
blobs = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode("ascii")),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    ).map(lambda doc: base64.b64encode(json.dumps(doc).encode()).decode("ascii")),
    st.fixed_dictionaries(
        {
            "format": st.just("cryptify-key-material"),
            "version": st.integers(0, 2),
            "kind": st.sampled_from(["cig", "user", "x"]),
            "periods": st.lists(st.dictionaries(st.text(max_size=6), st.text(max_size=6))),
        }
    ).map(lambda doc: base64.b64encode(json.dumps(doc).encode()).decode("ascii")),
)


class SetKeyResponderTests(SynchronousTestCase):
    """The CIG answers every bad blob with its reason."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())

    def take(self, blob: str) -> KeyMaterial:
        return store_blob(self.dir, blob)

    @settings(max_examples=200, deadline=None)
    @given(blobs)
    def test_every_refusal_has_a_reason(self, blob: str) -> None:
        """
        Any blob either sets the key or is refused with CommandFailed and a
        message that says what is wrong, never an unknown error.
        """
        _, client, pump = pair(CigAdmin(CigState("a", "b"), self.take))
        result = call(client, pump, cig_admin.SetKey, blob=blob)
        if isinstance(result, dict):
            return
        result.trap(CommandFailed)
        self.assertTrue(str(result.value).startswith("key material refused: "), result.value)
        self.assertGreater(len(str(result.value)), len("key material refused: "))

    def test_cannot_write(self) -> None:
        """
        A keystore that cannot be written is reported as such.
        """

        def broken(blob: str) -> KeyMaterial:
            raise PermissionError(13, "Permission denied")

        _, client, pump = pair(CigAdmin(CigState("a", "b"), broken))
        failure = call(client, pump, cig_admin.SetKey, blob="x")
        failure.trap(CommandFailed)
        self.assertEqual(str(failure.value), "cannot store the key material: Permission denied")


class SetKeyCliTests(SynchronousTestCase):
    """cig-cli refuses, with the reason, what could not even reach the CIG."""

    def run_set_key(self, stdin: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        status = cig_cli.run(["--socket", "/nonexistent", "set-key"], out, err, io.StringIO(stdin))
        return status, err.getvalue()

    def test_too_long_for_one_value(self) -> None:
        """
        A blob over what one management value carries is too long; it is not
        sent (the CIG at /nonexistent is never asked).
        """
        status, err = self.run_set_key("A" * (cig_cli.MAX_BLOB + 1) + "\n")
        self.assertEqual(status, 1)
        self.assertEqual(
            err,
            f"cig-cli: set-key: key material is too long ({cig_cli.MAX_BLOB + 1} bytes,"
            f" at most {cig_cli.MAX_BLOB})\n",
        )

    def test_line_too_long(self) -> None:
        """
        A line longer than cig-cli reads is refused, not cut and sent.
        """
        status, err = self.run_set_key("A" * (cig_cli.MAX_LINE + 10))
        self.assertEqual(status, 1)
        self.assertIn("too long", err)

    def test_not_ascii(self) -> None:
        """
        Characters base64 never holds are named as the problem.
        """
        status, err = self.run_set_key("ключ\n")
        self.assertEqual(status, 1)
        self.assertIn("not base64", err)

    @settings(max_examples=100, deadline=None)
    @given(st.text(max_size=100))
    def test_problem_is_said(self, blob: str) -> None:
        """
        Whatever the input, a refusal before sending is one line with a reason.
        """
        problem = cig_cli.blob_problem(blob)
        if problem is not None:
            self.assertTrue(problem)
            self.assertNotIn("\n", problem)


class PromptLinesTests(SynchronousTestCase):
    def drained(self, lines: cig_cli._Lines) -> list[object]:
        got: list[object] = []
        while lines.queue.pending:
            lines.queue.get().addCallback(got.append)
        return got

    def test_over_long_line_reported_once(self) -> None:
        """
        A line over the limit that arrives in several pieces is reported
        once, and the lines after it (in the same piece as its end) are
        still read.
        """
        lines = cig_cli._Lines()
        piece = b"x" * (cig_cli.MAX_LINE // 2 + 10)
        for _ in range(4):
            lines.dataReceived(piece)
        lines.dataReceived(b"tail\nstatus\nshow call\n")
        self.assertEqual(self.drained(lines), [cig_cli.TOO_LONG, "status", "show call"])

    def test_over_long_complete_line(self) -> None:
        """An over-long line that arrives whole is reported and the next is read."""
        lines = cig_cli._Lines()
        lines.dataReceived(b"y" * (cig_cli.MAX_LINE + 1) + b"\nstatus\n")
        self.assertEqual(self.drained(lines), [cig_cli.TOO_LONG, "status"])
