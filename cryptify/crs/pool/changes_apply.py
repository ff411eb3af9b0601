"""What pool-wide operator changes do to the running CRS
(:class:`StateApplier`): its accounts, blacklists, remote admins and
inter-working peers, the same effects as the ``crs-cli`` commands have on
one instance (see :mod:`~cryptify.crs.pool.changes`)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from cryptify.crs.accounts import AccountError
from cryptify.crs.interwork.peers import IwPeerError
from cryptify.crs.operator.state import CrsState
from cryptify.crs.pool.changes_core import Change, Kind, outcome
from cryptify.crs.pool.changes_replica import Replica
from cryptify.crs.remote_admin.store import AdminError
from cryptify.crypto.identity import period_of

log = Logger(namespace="cryptify.crs.pool.changes")


class StateApplier:
    """What changes do to the running CRS: its accounts, blacklists and
    remote admins (the same effects as the ``crs-cli`` commands have on
    one instance)."""

    def __init__(self, state: CrsState) -> None:
        self.state = state

    def apply(self, change: Change, replica: Replica) -> list[str]:
        try:
            problems = self._apply(change, replica)
        except Exception as exc:  # one change must never stop the link
            log.failure("pool change {change} failed", change=change.describe())
            problems = [f"unexpected {type(exc).__name__} (see the log)"]
        for problem in problems:
            log.warn("pool change {change}: {problem}", change=change.describe(), problem=problem)
        return problems

    def _apply(self, change: Change, replica: Replica) -> list[str]:
        kind = change.kind
        if kind in (
            Kind.ACCOUNT_CREATE,
            Kind.ACCOUNT_DELETE,
            Kind.BLACKLIST_ADD,
            Kind.BLACKLIST_REMOVE,
        ):
            return self.sync_account(change.text("account"), replica)
        if kind is Kind.APPLY:
            try:
                self.state.accounts.apply(change.octets("data"))
            except (AccountError, OSError) as exc:
                return [str(exc)]
            self.state.notify("crs", "reload")
            self.enforce_blacklists()
            return []
        if kind is Kind.RELOAD:
            problems = self.state.accounts.reload()
            if self.state.admins is not None:
                admins_problem = self.state.admins.load()
                if admins_problem is not None:
                    problems.append(admins_problem)
            self.state.notify("crs", "reload")
            self.enforce_blacklists()
            return problems
        if kind in (Kind.IW_ADD, Kind.IW_DELETE):
            return self._iw(change)
        return self._admin(change)

    def _iw(self, change: Change) -> list[str]:
        """``add|delete iw-crs``: this member's iw-crs.conf, and its link."""
        peers = self.state.iw
        if peers is None:
            return ["inter-working is not available here"]
        try:
            if change.kind is Kind.IW_ADD:
                peers.add(change.text("ip"), change.text("secret"), change.text("comment"))
            else:
                peers.delete(change.text("ip"))
        except (IwPeerError, OSError) as exc:
            return [str(exc)]
        return []

    def _admin(self, change: Change) -> list[str]:
        admins = self.state.admins
        if admins is None:
            return ["remote admins are not available here"]
        name = change.text("name")
        kind = change.kind
        existing = admins.get(name)
        # each is skipped when already so (the change applied again after a restart)
        try:
            if kind is Kind.ADMIN_CREATE:
                key = change.octets("key")
                if existing is not None and existing.key == key:
                    return []
                if existing is not None:
                    admins.delete(name)
                admins.create(name, key)
            elif kind is Kind.ADMIN_DELETE:
                if existing is not None:
                    admins.delete(name)
            elif kind in (Kind.ADMIN_ACCOUNT_ADD, Kind.ADMIN_ACCOUNT_DELETE):
                account = change.text("account")
                adding = kind is Kind.ADMIN_ACCOUNT_ADD
                if existing is not None and (account in existing.accounts) == adding:
                    return []
                if adding:
                    admins.add_account(name, account)
                else:
                    admins.delete_account(name, account)
            else:
                account, right = change.text("account"), change.text("authorization")
                adding = kind is Kind.ADMIN_AUTH_ADD
                granted = None if existing is None else existing.accounts.get(account)
                if granted is not None and (right in granted) == adding:
                    return []
                if adding:
                    admins.add_authorization(name, account, right)
                else:
                    admins.delete_authorization(name, account, right)
        except AdminError as exc:
            return [str(exc)]
        return []

    def sync_account(self, account: str, replica: Replica) -> list[str]:
        """Make this instance's account what the pool's changes say."""
        plan = replica.account_plan(account)
        store = self.state.accounts
        have = store.get(account)
        want = outcome(plan, None if have is None else (have.secret, have.blacklist))
        problems: list[str] = []
        try:
            if want is None:
                if have is not None:
                    self.delete_account(account)
                return []
            secret, blacklist = want
            if have is None:
                have = store.create(account, secret)
            elif have.secret != secret:
                have = store.set_secret(account, secret)
            for uri in sorted(blacklist - have.blacklist):
                store.set_blacklisted(account, uri, True)
            for uri in sorted(have.blacklist - blacklist):
                store.set_blacklisted(account, uri, False)
        except (AccountError, OSError) as exc:
            problems.append(str(exc))
        self.enforce_blacklists()
        return problems

    def delete_account(self, account: str) -> None:
        state = self.state
        registry = state.registry
        gone = registry.disconnect(registry.matching(account=account), "account deleted")
        if state.fanout is not None:
            # with workers, the clients are theirs (docs/workers.md)
            closing = defer.ensureDeferred(
                state.fanout.disconnect(account, None, "account deleted")
            )
            closing.addErrback(lambda f: log.failure("workers' clients of {a} kept", f, a=account))
        if state.objects is not None:
            objects = state.objects

            async def purge() -> None:
                await objects.purge_account(account)
                await objects.purge_observed(account)

            defer.ensureDeferred(purge()).addErrback(
                lambda f: log.failure("objects of deleted account {a} not purged", f, a=account)
            )
        state.accounts.delete(account)
        if state.admins is not None:
            try:
                state.admins.forget_account(account)
            except AdminError as exc:
                log.warn("account {a} deleted, but: {why}", a=account, why=str(exc))
        log.info("account {a} deleted by the pool; {n} clients disconnected", a=account, n=gone)

    def enforce_blacklists(self) -> int:
        state = self.state
        period = period_of(state.clock())
        listed = []
        for attachment in state.registry.matching():
            found = state.accounts.get(attachment.account)
            if found is not None and found.blacklisted(attachment.uri, period):
                listed.append(attachment)
        if state.fanout is not None:
            later = defer.ensureDeferred(self._enforce_in_workers())
            later.addErrback(lambda f: log.failure("blacklists not applied in the workers", f))
        return int(state.registry.disconnect(listed, "blacklisted")) if listed else 0

    async def _enforce_in_workers(self) -> int:
        """With workers: disconnect their blacklisted clients; how many."""
        state = self.state
        fanout = state.fanout
        if fanout is None:
            return 0
        period = period_of(state.clock())
        closed = 0
        for uri, account_id in await fanout.clients():
            account = state.accounts.get(account_id)
            if account is not None and account.blacklisted(uri, period):
                closed += (await fanout.disconnect(account_id, uri, "blacklisted"))[0]
        return closed

    async def wake(self, account: str, uri: str) -> str:
        push = self.state.push
        if push is None:
            return "push notifications are off"
        try:
            return str(await push.wake(account, uri))
        except Exception as exc:
            return f"the push token store does not answer: {type(exc).__name__}"

    def purge(self, account: str, uri: str | None) -> int | defer.Deferred[int]:
        registry = self.state.registry
        if uri is None:
            matches = registry.matching(account=account)
        else:
            matches = registry.matching(account=account, uri=uri)
        here = int(registry.disconnect(matches, "purged")) if matches else 0
        fanout = self.state.fanout
        if fanout is None:
            return here

        async def with_workers() -> int:
            theirs, _ = await fanout.purge(account, uri)
            return here + theirs

        return defer.ensureDeferred(with_workers())


__all__ = ["StateApplier"]
