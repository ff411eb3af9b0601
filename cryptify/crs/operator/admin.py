"""The CRS's management responders (the server side of ``crs-cli``).

One locator per management connection, holding the running CRS's state
(:class:`~cryptify.crs.operator.state.CrsState`) and the connection, so that a
``trace`` can stream to it and stop when it goes away.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from twisted.internet import defer
from twisted.logger import Logger

from cryptify import __version__
from cryptify.crs.accounts import (
    AccountError,
    check_account_id,
    check_secret,
    check_uri,
)
from cryptify.crs.operator.base import deferred, failing, next_period, read_time, utc
from cryptify.crs.operator.peers import PeerCommands
from cryptify.crs.operator.state import ATTACH_MODULE, PARENT_MODULE
from cryptify.crs.operator.stats import COLUMNS as STATS_COLUMNS
from cryptify.crs.operator.stats import Statistics
from cryptify.crs.pool.changes_core import Kind, Report
from cryptify.crs.remote_admin.store import AdminError
from cryptify.crs.slots import SLOTS, slot_of
from cryptify.crs.trace import ELEMENTS
from cryptify.crs.workers.calls import describe_worker
from cryptify.crypto.identity import period_of
from cryptify.protocols import crs_admin
from cryptify.protocols.mgmt import CommandFailed, table
from cryptify.protocols.relay_control import RelayStats
from cryptify.protocols.umsg import base_uri

log = Logger(namespace="cryptify.crs.admin")
T = TypeVar("T")

SERVICES_COLUMNS = ["Server", "Service", "Status"]
BLACKLIST_COLUMNS = ["URI"]
ATTACH_COLUMNS = ["URI", "ACCOUNT", "TIME", "VERSION", "IP:PORT", "CRS"]
SESSION_COLUMNS = ["CALLER", "CALLEE", "TIME", "STATE"]
MESSAGE_COLUMNS = ["URI", "POST", "DELIV", "READ", "ACCOUNT"]
UPDATES_COLUMNS = ["Account", "Current Month", "Next Month"]
SYSTEM_COLUMNS = ["SERVER", "PROCESS", "PID", "SLOTS"]
ACCOUNT_COLUMNS = ["SERVER", "MODULE", "PID", "LOADED ACCOUNTS"]
RELAY_COLUMNS = ["RX", "TXB", "TXERROR", "ERRNODEST", "ERRTOSHORT", "ERRTOLONG", "ENTRIES"]
CLIENT_INFO_COLUMNS = [
    "Uri",
    "Timestamp",
    "Client Time",
    "Scan Time",
    "OS",
    "OS Version",
    "CCA Version",
]
NOT_AVAILABLE = "Not Available"
#: What a wake-up answers for a client without a token here.
NO_TOKEN = "no push token"  # noqa: S105 (an answer, not a secret)


class CrsAdmin(PeerCommands):
    """Answers management commands from the running CRS's state (the
    remote-admin and inter-working commands are :class:`PeerCommands`')."""

    @crs_admin.ServerVersion.responder
    def server_version(self) -> dict[str, object]:
        return {"program": "crs", "version": __version__}

    @crs_admin.Echo.responder
    def echo(self, text: str) -> dict[str, object]:
        return {"text": text}

    @crs_admin.ShowServices.responder
    def show_services(self) -> dict[str, object]:
        rows = [[self.state.name, name, status] for name, status in self.state.services()]
        return {"table": table(SERVICES_COLUMNS, rows)}

    # -- accounts --------------------------------------------------------------

    @crs_admin.CreateAccount.responder
    @deferred
    async def create_account(self, account: str, secret: str) -> dict[str, object]:
        if self.state.changes is None:
            try:
                created = self.state.accounts.create(account, secret)
            except (AccountError, OSError) as exc:
                raise failing(exc) from exc
            return {"path": created.path}
        try:
            check_account_id(account)
            check_secret(secret)
        except AccountError as exc:
            raise failing(exc) from exc
        if self.state.accounts.get(account) is not None:
            raise CommandFailed(f"account {account} already exists")
        report = await self._pool(Kind.ACCOUNT_CREATE, {"account": account, "secret": secret})
        if report.problems:
            raise CommandFailed(f"account {account}: {report.text()}")
        path = os.path.join(self.state.accounts.directory, account)
        return {"path": path, "pool": report.text()}

    @crs_admin.ListAccounts.responder
    def list_accounts(self) -> dict[str, object]:
        rows = [[a.id, a.path, a.secret] for a in self.state.accounts]
        return {"table": table(["ID", "path", "shared secret"], rows)}

    @crs_admin.DeleteAccount.responder
    @deferred
    async def delete_account(self, account: str) -> dict[str, object]:
        self._account(account)
        if self.state.changes is not None:
            count = len(self.registry.matching(account=account))
            report = await self._pool(Kind.ACCOUNT_DELETE, {"account": account})
            return {"disconnected": count, "pool": report.text()}
        gone = self.registry.disconnect(self.registry.matching(account=account), "account deleted")
        if self.state.fanout is not None:
            theirs, _ = await self.state.fanout.disconnect(account, None, "account deleted")
            gone += theirs
        if self.state.objects is not None:
            await self.state.objects.purge_account(account)
            await self.state.objects.purge_observed(account)
        try:
            self.state.accounts.delete(account)
        except (AccountError, OSError) as exc:
            raise failing(exc) from exc
        if self.state.admins is not None:
            # a later account of the same ID must not inherit these rights
            try:
                holders = self.state.admins.forget_account(account)
            except AdminError as exc:
                raise CommandFailed(f"account {account} deleted, but: {exc}") from exc
            for name in holders:
                log.info(
                    "remote admin {admin} lost deleted account {account}",
                    admin=name,
                    account=account,
                )
        return {"disconnected": gone}

    @crs_admin.ReloadAccounts.responder
    @deferred
    async def reload_accounts(self) -> dict[str, object]:
        if self.state.changes is not None:
            report = await self._pool(Kind.RELOAD, {})
            who = Report(report.applied, report.pending)
            return {"problems": list(report.problems), "pool": who.text("reloaded on")}
        return self.reload_here()

    def reload_here(self) -> dict[str, object]:
        """Reload the accounts and admins of this instance only (SIGHUP)."""
        problems = self.state.accounts.reload()
        if self.state.admins is not None:
            # the admins file too, once an operator has repaired it
            admins_problem = self.state.admins.load()
            if admins_problem is not None:
                problems.append(admins_problem)
        self.state.notify("crs", "reload")
        self._enforce_blacklists()
        return {"problems": problems}

    @crs_admin.Apply.responder
    @deferred
    async def apply(self, data: object) -> dict[str, object]:
        try:
            raw = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CommandFailed("the update file did not arrive intact") from exc
        if self.state.changes is not None:
            try:
                account, update = self.state.accounts.open_update(raw)
            except AccountError as exc:
                raise failing(exc) from exc
            report = await self._pool(Kind.APPLY, {"data": raw})
            if report.problems:
                raise CommandFailed(f"update file: {report.text()}")
            return {
                "result": {
                    "account": account.id,
                    "revision": update.revision,
                    "periods": [m.period for m in update.months],
                },
                "pool": report.text(),
            }
        try:
            applied = self.state.accounts.apply(raw)
        except (AccountError, OSError) as exc:
            raise failing(exc) from exc
        self.state.notify("crs", "reload")
        self._enforce_blacklists()
        return {
            "result": {
                "account": applied.account,
                "revision": applied.revision,
                "periods": list(applied.periods),
            }
        }

    @crs_admin.ShowUpdates.responder
    def show_updates(self) -> dict[str, object]:
        current = period_of(self.state.clock())
        following = next_period(current)
        rows = []
        for account in self.state.accounts:
            cells = [account.id]
            for period in (current, following):
                month = account.months.get(period)
                cells.append(utc(month.created) if month is not None else NOT_AVAILABLE)
            rows.append(cells)
        return {"table": table(UPDATES_COLUMNS, rows)}

    # -- blacklist and purge ---------------------------------------------------

    def _enforce_blacklists(self, workers: bool = True) -> int:
        """Disconnect the blacklisted clients attached here (and, with
        ``workers N``, those of the workers, afterwards); how many here."""
        period = period_of(self.state.clock())
        listed = []
        for attachment in self.registry.matching():
            account = self.state.accounts.get(attachment.account)
            if account is not None and account.blacklisted(attachment.uri, period):
                listed.append(attachment)
        if workers and self.state.fanout is not None:
            later = defer.ensureDeferred(self._enforce_in_workers())
            later.addErrback(lambda f: log.failure("blacklists not applied in the workers", f))
        return int(self.registry.disconnect(listed, "blacklisted"))

    async def _enforce_in_workers(self) -> int:
        """Disconnect the blacklisted clients of the workers; how many."""
        fanout = self.state.fanout
        if fanout is None:
            return 0
        period = period_of(self.state.clock())
        closed = 0
        for uri, account_id in await fanout.clients():
            account = self.state.accounts.get(account_id)
            if account is not None and account.blacklisted(uri, period):
                closed += (await fanout.disconnect(account_id, uri, "blacklisted"))[0]
        return closed

    @crs_admin.AddBlacklist.responder
    @deferred
    async def add_blacklist(self, account: str, uri: str) -> dict[str, object]:
        self._account(account)
        if self.state.changes is not None:
            try:
                check_uri(uri)
            except AccountError as exc:
                raise failing(exc) from exc
            count = len(self.registry.matching(account=account, uri=uri))
            report = await self._pool(Kind.BLACKLIST_ADD, {"account": account, "uri": uri})
            if report.problems:
                raise CommandFailed(f"{uri}: {report.text()}")
            return {"disconnected": count, "pool": report.text()}
        try:
            self.state.accounts.set_blacklisted(account, uri, True)
        except (AccountError, OSError) as exc:
            raise failing(exc) from exc
        log.info("{uri} blacklisted in {account}", uri=uri, account=account)
        here = self._enforce_blacklists(workers=False)
        return {"disconnected": here + await self._enforce_in_workers()}

    @crs_admin.RemoveBlacklist.responder
    @deferred
    async def remove_blacklist(self, account: str, uri: str) -> dict[str, object]:
        found = self._account(account)
        if self.state.changes is not None:
            if uri not in found.blacklist:
                raise CommandFailed(f"{uri} is not on the blacklist of {account}")
            report = await self._pool(Kind.BLACKLIST_REMOVE, {"account": account, "uri": uri})
            if report.problems:
                raise CommandFailed(f"{uri}: {report.text()}")
            return {"pool": report.text()}
        try:
            self.state.accounts.set_blacklisted(account, uri, False)
        except (AccountError, OSError) as exc:
            raise failing(exc) from exc
        log.info("{uri} removed from the blacklist of {account}", uri=uri, account=account)
        return {}

    def blacklist_rows(self, account: str) -> list[list[str]]:
        """The rows of ``show blacklist ACCOUNT`` (:data:`BLACKLIST_COLUMNS`)."""
        found = self._account(account)
        return [[uri] for uri in found.effective_blacklist(period_of(self.state.clock()))]

    @crs_admin.ShowBlacklist.responder
    def show_blacklist(self, account: str) -> dict[str, object]:
        return {"table": table(BLACKLIST_COLUMNS, self.blacklist_rows(account))}

    async def _purge(self, account: str, uri: str | None) -> dict[str, object]:
        matches = self.registry.matching(account=account, uri=uri)
        here = self.registry.disconnect(matches, "purged")
        if self.state.fanout is not None:
            # with workers N the clients are theirs
            purged, missing = await self.state.fanout.purge(account, uri)
            return _with_missing({"purged": here + purged}, missing)
        if self.state.changes is None:
            return {"purged": here}
        total, report = await self.state.changes.purge(account, uri, here)
        return {"purged": total, "pool": report.text("purged on")}

    @crs_admin.PurgeClient.responder
    @deferred
    async def purge_client(self, account: str, uri: str) -> dict[str, object]:
        self._account(account)
        try:
            check_uri(uri)
        except AccountError as exc:
            raise failing(exc) from exc
        return await self._purge(account, uri)

    @crs_admin.PurgeClients.responder
    @deferred
    async def purge_clients(self, account: str) -> dict[str, object]:
        self._account(account)
        return await self._purge(account, None)

    @crs_admin.PurgeObserved.responder
    @deferred
    async def purge_observed(self, account: str) -> dict[str, object]:
        self._account(account)
        return {"purged": await self._objects().purge_observed(account)}

    # -- views -----------------------------------------------------------------

    @crs_admin.ShowAttach.responder
    @deferred
    async def show_attach(self) -> dict[str, object]:
        rows = self.registry.rows()
        if self.state.fanout is None:
            return {"table": table(ATTACH_COLUMNS, rows)}
        theirs, missing = await self.state.fanout.attach_rows()
        merged = sorted(rows + theirs, key=lambda row: row[0])
        return _with_missing({"table": table(ATTACH_COLUMNS, merged)}, missing)

    @crs_admin.ShowSession.responder
    @deferred
    async def show_session(self) -> dict[str, object]:
        rows = self.state.sessions.rows() if self.state.sessions is not None else []
        if self.state.fanout is None:
            return {"table": table(SESSION_COLUMNS, rows)}
        # the calls are the workers' (the parent's own table stays empty)
        theirs, missing = await self.state.fanout.session_rows()
        return _with_missing({"table": table(SESSION_COLUMNS, rows + theirs)}, missing)

    @crs_admin.ShowMessage.responder
    @deferred
    async def show_message(self) -> dict[str, object]:
        if self.state.messages is None:
            return {"table": table(MESSAGE_COLUMNS, [])}
        try:
            counters = await self.state.messages.counters()
        except Exception as exc:
            raise CommandFailed(f"the message store does not answer: {exc}") from exc
        rows = [
            [c.uri, str(c.posted), str(c.delivered), read_time(c.read), c.account or "-"]
            for c in counters
        ]
        return {"table": table(MESSAGE_COLUMNS, rows)}

    @crs_admin.CheckSlot.responder
    def check_slot(self, uri: str) -> dict[str, object]:
        base = base_uri(uri)
        try:
            check_uri(base)
        except AccountError as exc:
            raise failing(exc) from exc
        slot = slot_of(base)
        if self.state.pool is not None:
            return {"slot": slot, "owner": self.state.pool.owner(slot) or "-"}
        return {"slot": slot, "owner": self.state.slots.owner(slot)}

    @crs_admin.ShowSystem.responder
    def show_system(self) -> dict[str, object]:
        if self.state.pool is not None:
            members = []
            for n, pid, ranges in self.state.pool.rows():
                if n != self.state.name or self.state.workers is None:
                    members.append([n, ATTACH_MODULE, pid, ranges])
                    continue
                # this instance, with workers: the parent, then each worker
                # with its cut of the slots the instance owns now
                members.append([n, PARENT_MODULE, pid, ranges])
                members += self._worker_rows(_ranges(ranges))
            return {"table": table(SYSTEM_COLUMNS, members)}
        slots = self.state.slots
        owned = f"0-{SLOTS - 1}" if len(slots.hosts) == 1 else slots.describe(self.state.name)
        rows = [[self.state.name, ATTACH_MODULE, str(self.state.pid), owned]]
        if self.state.workers is not None:
            # the parent manages; each worker is the home of its cut of the
            # instance's slots (docs/workers.md)
            rows = [[self.state.name, PARENT_MODULE, str(self.state.pid), "-"]]
            rows += self._worker_rows(_ranges(owned))
        return {"table": table(SYSTEM_COLUMNS, rows)}

    def _worker_rows(self, owned: list[tuple[int, int]]) -> list[list[str]]:
        """``show system`` rows of the workers, each with its cut of ``owned``."""
        workers = self.state.workers() if self.state.workers is not None else []
        rows = []
        for index, pid in workers:
            module = f"{ATTACH_MODULE}/{index + 1}"
            cut = describe_worker(len(workers), index, owned)
            rows.append([self.state.name, module, "-" if pid is None else str(pid), cut])
        return rows

    @crs_admin.ShowAccount.responder
    @deferred
    async def show_account(self) -> dict[str, object]:
        loaded = ",".join(a.id for a in self.state.accounts) or "-"
        if self.state.fanout is None:
            rows = [[self.state.name, ATTACH_MODULE, str(self.state.pid), loaded]]
            return {"table": table(ACCOUNT_COLUMNS, rows)}
        # the parent's own accounts (it checks the operator's commands with
        # them), then what each worker has loaded to serve its clients
        rows = [[self.state.name, PARENT_MODULE, str(self.state.pid), loaded]]
        theirs, missing = await self.state.fanout.account_rows()
        return _with_missing({"table": table(ACCOUNT_COLUMNS, rows + theirs)}, missing)

    @crs_admin.ShowRelay.responder
    @deferred
    async def show_relay(self) -> dict[str, object]:
        if self.state.relay is None:
            raise CommandFailed("this CRS has no relay configured")
        try:
            answer = await self.state.relay.call(RelayStats)
        except Exception as exc:
            raise CommandFailed(f"the relay does not answer: {exc}") from exc
        stats = answer.get("stats")
        if not isinstance(stats, dict):
            raise CommandFailed("the relay answered without its statistics")
        return {"table": table(RELAY_COLUMNS, [[str(stats.get(c, 0)) for c in RELAY_COLUMNS]])}

    @crs_admin.ShowClientInfo.responder
    @deferred
    async def show_client_info(self, account: str) -> dict[str, object]:
        self._account(account)
        rows = []
        for uri, info in await self._objects().client_info(account):
            updated = info.get("updated", "")
            stamp = utc(int(updated)) if updated.isascii() and updated.isdigit() else "-"
            rows.append(
                [uri, stamp]
                + [
                    info.get(k, "-")
                    for k in ("client-time", "scan-time", "os", "os-version", "cca-version")
                ]
            )
        return {"table": table(CLIENT_INFO_COLUMNS, rows)}

    @crs_admin.ShowPushToken.responder
    @deferred
    async def show_push_token(self, account: str, uri: str) -> dict[str, object]:
        self._account(account)
        found = await self._objects().push_token(account, uri)
        rows = [[uri, found.get("token", "-"), found.get("type", "-")]] if found else []
        return {"table": table(["Uri", "Token", "Type"], rows)}

    @crs_admin.WakeupClient.responder
    @deferred
    async def wakeup_client(self, account: str, uri: str) -> dict[str, object]:
        self._account(account)
        try:
            check_uri(uri)
        except AccountError as exc:
            raise failing(exc) from exc
        if self.state.push is None:
            raise CommandFailed("push notifications are off (crs.conf: features push, cps ...)")
        try:
            result = str(await self.state.push.wake(account, uri))
        except Exception as exc:
            raise CommandFailed(f"the push token store does not answer: {exc}") from exc
        log.info(
            "wakeup client {uri} of {account}: {result}", uri=uri, account=account, result=result
        )
        if result == NO_TOKEN and self.state.changes is not None:
            # in a pool the member serving the client's slot keeps its token
            answers = await self.state.changes.wake(account, uri)
            for peer, answer in answers:
                if answer == "sent":
                    return {"result": answer, "pool": f"sent by {peer}"}
            elsewhere = "; ".join(f"{peer}: {answer}" for peer, answer in answers)
            raise CommandFailed(f"not sent: {result} here; {elsewhere}")
        if result != "sent":
            # never say sent before the provider took it
            raise CommandFailed(f"not sent: {result}")
        return {"result": result}

    # -- statistics ------------------------------------------------------------

    def _stats(self, account: str) -> Statistics:
        self._account(account)
        if self.state.stats is None:
            raise CommandFailed("statistics are not available")
        return self.state.stats

    async def _stats_call(self, account: str, action: Callable[[Statistics], Awaitable[T]]) -> T:
        stats = self._stats(account)
        try:
            return await action(stats)
        except Exception as exc:
            raise CommandFailed(f"the statistics store does not answer: {exc}") from exc

    @crs_admin.StatsEnable.responder
    @deferred
    async def stats_enable(self, account: str) -> dict[str, object]:
        await self._stats_call(account, lambda stats: stats.enable(account))
        log.info("statistics enabled for {account}", account=account)
        return {}

    @crs_admin.StatsDisable.responder
    @deferred
    async def stats_disable(self, account: str) -> dict[str, object]:
        await self._stats_call(account, lambda stats: stats.disable(account))
        log.info("statistics disabled for {account}", account=account)
        return {}

    @crs_admin.StatsClear.responder
    @deferred
    async def stats_clear(self, account: str) -> dict[str, object]:
        cleared = await self._stats_call(account, lambda stats: stats.clear(account))
        log.info("statistics cleared for {account}", account=account)
        return {"cleared": cleared}

    async def stats_rows(self, account: str) -> list[list[str]]:
        """The rows of ``stats export ACCOUNT`` (:data:`STATS_COLUMNS`)."""
        return await self._stats_call(account, lambda stats: stats.export(account))

    @crs_admin.StatsExport.responder
    @deferred
    async def stats_export(self, account: str) -> dict[str, object]:
        return {"table": table(list(STATS_COLUMNS), await self.stats_rows(account))}

    # -- traces ----------------------------------------------------------------

    @crs_admin.Trace.responder
    @deferred
    async def trace(self, element: str) -> dict[str, object]:
        if element not in ELEMENTS:
            raise CommandFailed(f"unknown trace element {element!r}: one of {', '.join(ELEMENTS)}")
        proto = self.proto
        if proto is None:
            raise CommandFailed("trace needs a live management connection")
        unsubscribe = self.state.trace.subscribe(element, proto.push_trace)
        proto.on_lost.append(unsubscribe)
        log.info("trace {element} started", element=element)
        if self.state.fanout is None:
            return {}
        # with workers N: the workers' lines too, in the same stream
        stop, missing = await self.state.fanout.trace(element, proto.push_trace)
        if proto.transport is None:
            # the operator went away meanwhile (AMP forgets its transport)
            stop()
        else:
            proto.on_lost.append(stop)
        return _with_missing({}, missing)


def _ranges(text: str) -> list[tuple[int, int]]:
    """The (first, last) ranges of a SLOTS column (``0-99,200-299``; ``-``: none)."""
    found = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and last.isdigit():
            found.append((int(first), int(last)))
    return found


def _with_missing(answer: dict[str, object], missing: str | None) -> dict[str, object]:
    """``answer`` with the workers that did not answer, when some did not."""
    if missing is not None:
        answer["missing"] = missing
    return answer
