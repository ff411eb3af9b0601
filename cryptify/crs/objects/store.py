"""Client objects kept for operators: push tokens and client information.

Stored in ``redis_low`` (durable) as one hash per client:

- ``obj:{ACCOUNT}:push:{URI}``: ``token``, ``type``, ``updated``
- ``obj:{ACCOUNT}:info:{URI}``: the client's info fields and ``updated``

and an index set per account and kind (``obj:{ACCOUNT}:info``,
``obj:{ACCOUNT}:push``) so ``show client-info ACCOUNT`` can list them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptify.crs.trace import TraceHub

if TYPE_CHECKING:
    from txredisapi import RedisProtocol

    from cryptify.crs.redis.store import RedisStore

#: The client-info fields operators see, in ``show client-info`` order.
INFO_FIELDS = ("client-time", "scan-time", "os", "os-version", "cca-version")
#: Longest value kept for any field.
MAX_FIELD = 512


def _clean(value: object) -> str:
    text = str(value)[:MAX_FIELD]
    return "".join(c if c.isprintable() else "?" for c in text)


class ClientObjects:
    """Push tokens, client info and observed clients in Redis.

    ``store`` returns the ``redis_low`` store when called.
    """

    def __init__(
        self,
        store: Callable[[], RedisStore],
        trace: TraceHub | None,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.trace = trace
        self.clock = clock

    def _client(self) -> RedisProtocol:
        # the store is looked up at use: it exists once Redis has started
        return self.store().client

    async def set_push_token(self, account: str, uri: str, token: str, kind: str) -> None:
        client = self._client()
        key = f"obj:{account}:push:{uri}"
        await client.hmset(
            key, {"token": _clean(token), "type": _clean(kind), "updated": str(int(self.clock()))}
        )
        await client.sadd(f"obj:{account}:push", uri)
        if self.trace is not None:
            self.trace.emit("object", uri, "update client_token")

    async def set_client_info(self, account: str, uri: str, info: dict[str, str]) -> None:
        client = self._client()
        fields = {k: _clean(v) for k, v in info.items() if k in INFO_FIELDS}
        fields["updated"] = str(int(self.clock()))
        await client.hmset(f"obj:{account}:info:{uri}", fields)
        await client.sadd(f"obj:{account}:info", uri)
        if self.trace is not None:
            self.trace.emit("object", uri, "update client_info")

    async def push_token(self, account: str, uri: str) -> dict[str, str] | None:
        found = await self._client().hgetall(f"obj:{account}:push:{uri}")
        return dict(found) if found else None

    async def forget_push_token(self, account: str, uri: str, token: str) -> bool:
        """Remove a push token the provider called dead, unless the client has
        stored another one since; return whether it was removed."""
        client = self._client()
        key = f"obj:{account}:push:{uri}"
        found = await client.hgetall(key)
        if not found or found.get("token") != _clean(token):
            return False
        await client.delete(key)
        await client.srem(f"obj:{account}:push", uri)
        if self.trace is not None:
            self.trace.emit("object", uri, "remove client_token")
        return True

    async def client_info(self, account: str) -> list[tuple[str, dict[str, str]]]:
        client = self._client()
        uris = sorted(await client.smembers(f"obj:{account}:info"))
        result = []
        for uri in uris:
            found = await client.hgetall(f"obj:{account}:info:{uri}")
            if found:
                result.append((uri, dict(found)))
        return result

    async def purge_account(self, account: str) -> None:
        """Forget every object of an account."""
        client = self._client()
        for kind in ("push", "info"):
            uris = await client.smembers(f"obj:{account}:{kind}")
            keys = [f"obj:{account}:{kind}:{u}" for u in uris] + [f"obj:{account}:{kind}"]
            await client.delete(*keys)

    async def observe(self, account: str, uri: str) -> None:
        """Remember that ``uri`` belongs to ``account`` (it attached under it)."""
        await self._client().sadd(f"observed:{account}", uri)

    async def purge_observed(self, account: str) -> int:
        """Forget the account's observed clients; return how many there were."""
        client = self._client()
        count = int(await client.scard(f"observed:{account}"))
        await client.delete(f"observed:{account}")
        return count
