"""The CRS's wake path, in memory: token lookup, rules, link answers, back-off."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from cryptify.config import ConfigError
from cryptify.config.crs import parse_crs_config, render_crs_config
from cryptify.crs.accounts import AccountStore
from cryptify.crs.calls.core import SessionTable
from cryptify.crs.objects.store import ClientObjects
from cryptify.crs.operator.admin import CrsAdmin
from cryptify.crs.operator.state import CrsState
from cryptify.crs.push.core import WAKE_INTERVAL, Counter
from cryptify.crs.push.wiring import (
    MAX_SKEW,
    PROVIDER_TOKEN_REUSE,
    CpsLink,
    CpsProviderTokens,
    DirectApns,
    LinkDown,
    Pusher,
)
from cryptify.crs.trace import TraceHub
from cryptify.protocols import crs_admin, push_link
from cryptify.protocols.mgmt import CommandFailed, ManagementClient, ManagementProtocol
from tests.fakes import SECRET, Att, FakeParties, FakeRelay, FakeStore
from tests.messages_support import DeliveryCase

ACCOUNT = "acme"
ALICE = "tel:+4611"
APNS_TOKEN = "ab" * 32


class FakeLink:
    """The link as the pusher sees it; answers from a script (default sent)."""

    def __init__(self) -> None:
        self.active = True
        self.skew: float | None = 0.0
        self.on_login: list[Callable[[], None]] = []
        self.calls: list[tuple[type[amp.Command], dict[str, Any]]] = []
        self.answers: list[Any] = []

    def call(self, command: type[amp.Command], **kwargs: Any) -> defer.Deferred[dict[str, Any]]:
        if not self.active:
            return defer.fail(LinkDown("down"))
        self.calls.append((command, kwargs))
        answer = self.answers.pop(0) if self.answers else {"outcome": push_link.SENT}
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(answer)

    def login(self) -> None:
        self.active = True
        for callback in self.on_login:
            callback()

    def wakes(self) -> list[dict[str, Any]]:
        return [kw for command, kw in self.calls if command is push_link.Wake]


class FakeTokens:
    def __init__(self) -> None:
        self.tokens: dict[tuple[str, str], dict[str, str]] = {}

    async def push_token(self, account: str, uri: str) -> dict[str, str] | None:
        return self.tokens.get((account, uri))

    async def forget_push_token(self, account: str, uri: str, token: str) -> bool:
        if self.tokens.get((account, uri), {}).get("token") == token:
            del self.tokens[(account, uri)]
            return True
        return False


class PusherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.link = FakeLink()
        self.tokens = FakeTokens()
        self.tokens.tokens[(ACCOUNT, ALICE)] = {"token": APNS_TOKEN, "type": "apns"}
        self.pusher = Pusher(self.clock, self.tokens, self.link)
        self.addCleanup(self.no_timers_left)

    def no_timers_left(self) -> None:
        self.pusher.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def wake(self) -> str:
        return str(self.successResultOf(defer.ensureDeferred(self.pusher.wake(ACCOUNT, ALICE))))

    def test_absent_client_with_token_is_woken_once(self) -> None:
        """A client with a token gets one Wake with its kind and token, and
        nothing else about it (no URI, no account) goes over the link."""
        self.pusher.absent(ACCOUNT, ALICE)
        self.assertEqual(self.link.wakes(), [{"kind": "apns", "token": APNS_TOKEN}])
        self.assertEqual(self.pusher.rules.counters[Counter.SENT], 1)

    def test_no_token_no_push(self) -> None:
        """A client that left no token is not pushed."""
        self.assertEqual(
            self.successResultOf(defer.ensureDeferred(self.pusher.wake(ACCOUNT, "tel:+4699"))),
            "no push token",
        )
        self.assertEqual(self.link.calls, [])

    def test_rate_limited_per_client(self) -> None:
        """A second wake within the interval is not sent; after it, it is."""
        self.assertEqual(self.wake(), "sent")
        self.assertTrue(self.wake().startswith("limited"))
        self.assertEqual(len(self.link.wakes()), 1)
        self.clock.advance(WAKE_INTERVAL)
        self.assertEqual(self.wake(), "sent")

    def test_unregistered_token_is_removed(self) -> None:
        """A token the provider calls dead is removed from the store."""
        self.link.answers = [{"outcome": push_link.UNREGISTERED, "reason": "Unregistered"}]
        self.assertTrue(self.wake().startswith("unregistered"))
        self.assertEqual(self.tokens.tokens, {})

    def test_later_backs_off_then_sends_again(self) -> None:
        """A "later" answer holds the wake for its retry-after and then sends it again."""
        self.link.answers = [{"outcome": push_link.LATER, "retry_after": 10.0, "reason": "busy"}]
        self.assertTrue(self.wake().startswith("deferred"))
        self.clock.advance(9)
        self.assertEqual(len(self.link.wakes()), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.link.wakes()), 2)
        self.assertEqual(self.pusher.rules.counters[Counter.SENT], 1)

    def test_link_down_defers_until_login(self) -> None:
        """Wakes asked while the link is down are sent when it logs in."""
        self.link.active = False
        self.assertTrue(self.wake().startswith("deferred"))
        self.assertEqual(self.link.calls, [])
        self.link.login()
        self.clock.advance(0)
        self.assertEqual(self.link.wakes(), [{"kind": "apns", "token": APNS_TOKEN}])

    def test_link_lost_during_wake_is_later(self) -> None:
        """A link that breaks under a wake backs off rather than losing it."""
        self.link.answers = [ConnectionError("lost")]
        self.assertTrue(self.wake().startswith("deferred"))
        self.clock.advance(1)
        self.assertEqual(len(self.link.wakes()), 2)

    def test_refused(self) -> None:
        """A refusal is reported and not retried."""
        self.link.answers = [{"outcome": push_link.REFUSED, "reason": "BadTopic"}]
        self.assertEqual(self.wake(), "refused: BadTopic")
        self.clock.advance(600)
        self.assertEqual(len(self.link.wakes()), 1)

    def test_unknown_kind_is_not_pushed(self) -> None:
        """A kind we have no provider for is not sent."""
        self.tokens.tokens[(ACCOUNT, ALICE)] = {"token": "x" * 20, "type": "webpush"}
        self.assertIn("not supported", self.wake())
        self.assertEqual(self.link.calls, [])

    def test_fcm_goes_over_the_link(self) -> None:
        """An fcm token is sent to the push server as kind fcm."""
        self.tokens.tokens[(ACCOUNT, ALICE)] = {"token": "f" * 40, "type": "fcm"}
        self.assertEqual(self.wake(), "sent")
        self.assertEqual(self.link.wakes(), [{"kind": "fcm", "token": "f" * 40}])

    def test_status(self) -> None:
        """show services: active/inactive and the counters."""
        self.wake()
        self.assertTrue(self.pusher.status().startswith("active ("))
        self.assertIn("sent 1", self.pusher.status())
        self.link.active = False
        self.assertTrue(self.pusher.status().startswith("inactive"))


class DirectSkewTests(SynchronousTestCase):
    def test_clock_skew_reported_in_log_and_status(self) -> None:
        """With direct APNs, a clock more than 10 minutes off the push server's
        is logged once as a warning and shown by show services."""
        clock = Clock()
        link = FakeLink()
        pusher = Pusher(clock, FakeTokens(), link, direct=DirectApns(clock, link))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        link.skew = MAX_SKEW + 120
        link.login()
        link.login()
        warnings = [e for e in events if "clock" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertIn("clock skew 720 s", pusher.status())
        self.assertIn("direct", pusher.status())

    def test_small_skew_is_quiet(self) -> None:
        """A clock within 10 minutes is not reported."""
        clock = Clock()
        link = FakeLink()
        link.skew = MAX_SKEW - 1
        pusher = Pusher(clock, FakeTokens(), link, direct=DirectApns(clock, link))
        link.login()
        self.assertNotIn("skew", pusher.status())


class PushConfigLineTests(SynchronousTestCase):
    def test_trust_files(self) -> None:
        """push-config cps|apns trust FILE name CA files; they survive a
        render and parse round trip."""
        text = (
            "[GLOBAL]\nfeatures push\ncps 127.0.0.1 5230 crs1 s3cret\n"
            "push-config apns type direct\n"
            "push-config cps trust /etc/crs/cps-ca.pem\n"
            "push-config apns trust /etc/crs/apns-ca.pem\n"
        )
        cfg = parse_crs_config(text)
        self.assertEqual(cfg.global_.cps_trust, "/etc/crs/cps-ca.pem")
        self.assertEqual(cfg.global_.apns_trust, "/etc/crs/apns-ca.pem")
        self.assertEqual(parse_crs_config(render_crs_config(cfg)), cfg)

    def test_unknown_option(self) -> None:
        """Another option is refused with its place."""
        with self.assertRaises(ConfigError) as caught:
            parse_crs_config("[GLOBAL]\npush-config cps type direct\n", "crs.conf")
        self.assertIn("crs.conf:2:", str(caught.exception))


class MessageHookTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.absent: list[tuple[str, str]] = []
        self.messaging.on_absent = lambda account, uri: self.absent.append((account, uri))

    def test_message_to_absent_client_asks_for_a_wake(self) -> None:
        """A content message stored for a recipient that is not attached asks
        for one wake-up of the base URI, after it was posted."""
        sender = self.attach("tel:+1")
        self.post(sender, 1, "tel:+2;101", b"hello")
        self.assertEqual(len(sender.of("posted")), 1)
        self.assertEqual(self.absent, [("acme", "tel:+2")])

    def test_attached_recipient_needs_no_wake(self) -> None:
        """An attached recipient gets the message, no wake-up."""
        sender = self.attach("tel:+1")
        self.attach("tel:+2", "c2")
        self.post(sender, 1, "tel:+2", b"hello")
        self.assertEqual(self.absent, [])

    def test_refused_post_needs_no_wake(self) -> None:
        """A post refused (unknown recipient) wakes nobody."""
        sender = self.attach("tel:+1")
        self.post(sender, 1, "tel:+3", b"hello")
        self.assertEqual(self.absent, [])


class CallHookTests(SynchronousTestCase):
    def test_invite_to_absent_callee_asks_for_a_wake(self) -> None:
        """An invite whose callee is not attached asks for its wake-up (the
        caller is still told not-connected)."""
        clock = Clock()
        parties = FakeParties()
        parties.online["tel:+1"] = Att("tel:+1")
        table = SessionTable(parties, FakeRelay(), clock, TraceHub(clock.seconds))
        absent: list[tuple[str, str]] = []
        table.on_absent = lambda account, uri: absent.append((account, uri))
        table.invite(Att("tel:+1"), 7, "tel:+2", b"mikey")
        self.assertEqual(absent, [("acme", "tel:+2")])
        table.invite(Att("tel:+2"), 8, "tel:+1", b"mikey")
        self.assertEqual(len(absent), 1)


class WakeupClientTests(SynchronousTestCase):
    """``crs-cli wakeup client account ACCOUNT URI`` over the management AMP, with
    the real client object store (in memory) and a fake push link."""

    def setUp(self) -> None:
        self.clock = Clock()
        trace = TraceHub(self.clock.seconds)
        store = FakeStore()
        self.objects = ClientObjects(lambda: store, trace, self.clock.seconds)
        self.link = FakeLink()
        self.pusher = Pusher(self.clock, self.objects, self.link)
        accounts = AccountStore(self.mktemp())
        accounts.create("acme", SECRET)
        self.state = CrsState("crs1", {"crs": lambda: True}, accounts, trace, push=self.pusher)
        server = ManagementProtocol(lambda proto: CrsAdmin(self.state, proto))
        self.client = ManagementClient(lambda line: None)
        self.pump = iosim.connect(
            server, iosim.makeFakeServer(server), self.client, iosim.makeFakeClient(self.client)
        )

    def wakeup(self, uri: str = ALICE) -> Any:
        results: list[Any] = []
        self.client.callRemote(crs_admin.WakeupClient, account="acme", uri=uri).addBoth(
            results.append
        )
        self.pump.flush()
        return results[0]

    def store_token(self, token: str = APNS_TOKEN, kind: str = "apns") -> None:
        self.successResultOf(
            defer.ensureDeferred(self.objects.set_push_token("acme", ALICE, token, kind))
        )

    def test_sent(self) -> None:
        """A client with a token is woken and the operator told so."""
        self.store_token()
        self.assertEqual(self.wakeup()["result"], "sent")
        self.assertEqual(self.link.wakes(), [{"kind": "apns", "token": APNS_TOKEN}])

    def test_no_token(self) -> None:
        """Without a token the action fails and says why."""
        failure = self.wakeup()
        failure.trap(CommandFailed)
        self.assertIn("no push token", failure.getErrorMessage())

    def test_rate_limited(self) -> None:
        """The operator's wake-up is rate-limited like the others, and says so."""
        self.store_token()
        self.wakeup()
        failure = self.wakeup()
        failure.trap(CommandFailed)
        self.assertIn("limited", failure.getErrorMessage())

    def test_dead_token_removed_from_the_store(self) -> None:
        """A token the provider calls dead is gone from show push-token."""
        self.store_token()
        self.link.answers = [{"outcome": push_link.UNREGISTERED, "reason": "Unregistered"}]
        self.wakeup().trap(CommandFailed)
        found = self.successResultOf(defer.ensureDeferred(self.objects.push_token("acme", ALICE)))
        self.assertIsNone(found)

    def test_replaced_token_is_kept(self) -> None:
        """A token the client replaced meanwhile is not removed."""
        self.store_token("cd" * 32)
        removed = self.successResultOf(
            defer.ensureDeferred(self.objects.forget_push_token("acme", ALICE, APNS_TOKEN))
        )
        self.assertFalse(removed)
        found = self.successResultOf(defer.ensureDeferred(self.objects.push_token("acme", ALICE)))
        self.assertEqual(found["token"], "cd" * 32)  # type: ignore[index]

    def test_push_off(self) -> None:
        """Without features push the action says push is off."""
        self.state.push = None
        failure = self.wakeup()
        failure.trap(CommandFailed)
        self.assertIn("push notifications are off", failure.getErrorMessage())

    def test_services_row(self) -> None:
        """show services has the push row with its state."""
        self.state.probes["push"] = self.pusher.status
        rows = dict(self.state.services())
        self.assertTrue(rows["push"].startswith("active ("))


class LinkBackoffTests(SynchronousTestCase):
    def test_retries_back_off_and_stop_cleanly(self) -> None:
        """Failed attempts in a row wait longer each time (the retry policy's
        delays), the secret never reaches the log, and stopping leaves no timer."""

        class Refusing:
            attempts = 0

            def connect(self, factory: Any) -> defer.Deferred[Any]:
                Refusing.attempts += 1
                return defer.fail(ConnectionRefusedError("refused"))

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        link = CpsLink(clock, "localhost", 1, "crs1", "the-link-secret", retry=lambda n: 10.0 * n)
        link._endpoint = Refusing  # type: ignore[method-assign]
        link.startService()
        self.assertEqual((Refusing.attempts, link.state), (1, "waiting"))
        clock.advance(9)
        self.assertEqual(Refusing.attempts, 1)
        clock.advance(1)
        self.assertEqual(Refusing.attempts, 2)
        clock.advance(19)
        self.assertEqual(Refusing.attempts, 2)
        clock.advance(1)
        self.assertEqual(Refusing.attempts, 3)
        self.assertFalse(link.active)
        self.successResultOf(link.stopService())
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertNotIn("the-link-secret", " ".join(str(e) for e in events))


class ProviderTokenReuseTests(SynchronousTestCase):
    def test_token_reused_then_fetched_again(self) -> None:
        """Direct APNs asks the push server for a provider token at most once
        per PROVIDER_TOKEN_REUSE, again after renew(), and notes the skew of
        the server's clock each time."""
        clock = Clock()
        clock.advance(1_800_000_000)
        link = FakeLink()
        link.answers = [
            {
                "token": f"jwt-{n}",
                "issued": 0,
                "endpoint": "https://a",
                "topic": "t",
                "time": clock.seconds() - 5,
            }
            for n in range(3)
        ]
        tokens = CpsProviderTokens(link, clock.seconds)

        def token() -> str:
            return str(self.successResultOf(defer.ensureDeferred(tokens.token())))

        self.assertEqual(token(), "jwt-0")
        clock.advance(PROVIDER_TOKEN_REUSE - 1)
        self.assertEqual(token(), "jwt-0")
        clock.advance(1)
        self.assertEqual(token(), "jwt-1")
        tokens.renew()
        self.assertEqual(token(), "jwt-2")
        self.assertEqual(len(link.calls), 3)
        self.assertEqual((tokens.endpoint, tokens.topic), ("https://a", "t"))
        self.assertIsNotNone(tokens.skew)

    def test_link_down_is_unreachable(self) -> None:
        """Without the link there is no token: the wake is later, not lost."""
        link = FakeLink()
        link.active = False
        direct = DirectApns(Clock(), link)
        answer = self.successResultOf(defer.ensureDeferred(direct.wake("ab" * 32, voip=False)))
        self.assertEqual(answer.outcome.value, "later")
