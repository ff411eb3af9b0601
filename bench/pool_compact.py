"""
Pool change log compaction: how long folding takes and what it saves, one JSON line.

    python bench/pool_compact.py [--changes N] [--accounts A]

A replica makes N changes over A accounts (creates, blacklist adds and
removes, deletes and re-creates, in turns), each appended and fsync'ed to
a real change log in a temporary directory, as the CRS does.  Then, as if
every member had confirmed them all: the compaction (fold, then the
atomic rewrite with its fsyncs), the file before and after, the start-up
read of the compacted log, and a fresh member (an empty log) taking the
snapshot from a peer (decode, merge, rewrite).  Times are wall seconds;
``load`` is the 1-minute load average when it ended.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from cryptify.crs.pool.changes_core import Kind
from cryptify.crs.pool.changes_log import ChangeLog
from cryptify.crs.pool.changes_replica import Replica
from cryptify.crs.pool.changes_snapshot import Snapshot

SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--changes", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        log = ChangeLog(os.path.join(root, "a", "pool-changes"))
        loaded = log.open(1.0)
        replica = Replica("crs1", loaded.log_id)
        started = time.perf_counter()
        present: set[str] = set()
        for n in range(args.changes):
            account = f"acct{n % args.accounts}"
            step = (n // args.accounts) % 4
            if account not in present:
                kind, extra = Kind.ACCOUNT_CREATE, {"secret": SECRET}
                present.add(account)
            elif step == 3:
                kind, extra = Kind.ACCOUNT_DELETE, {}
                present.discard(account)
            else:
                blacklist = Kind.BLACKLIST_ADD if step == 1 else Kind.BLACKLIST_REMOVE
                kind, extra = blacklist, {"uri": f"tel:+49{n % 7}"}
            change = replica.make(kind, {"account": account, **extra}, n)
            log.append(replica.encoded.get(change.id) or change.encode())
            replica.commit(change)
        made = time.perf_counter() - started
        before = os.path.getsize(log.path)
        started = time.perf_counter()
        snapshot = replica.compact(dict(replica.hw))
        assert snapshot is not None
        log.rewrite(loaded.log_id, snapshot, [], fresh=False)
        replica.fold(snapshot)
        compacted = time.perf_counter() - started
        after = os.path.getsize(log.path)
        log.close()
        started = time.perf_counter()
        again = ChangeLog(log.path).open(2.0)
        Replica("crs1", again.log_id, again.changes, again.snapshot)
        read = time.perf_counter() - started
        started = time.perf_counter()
        data = snapshot.encode()
        fresh_log = ChangeLog(os.path.join(root, "b", "pool-changes"))
        fresh = fresh_log.open(3.0)
        member = Replica("crs2", fresh.log_id)
        taken = Snapshot.decode(data)
        merged = member.merged(taken)
        fresh_log.rewrite(fresh.log_id, merged, [], fresh=True)
        due = member.install(taken)
        installed = time.perf_counter() - started
        fresh_log.close()
    print(
        json.dumps(
            {
                "changes": args.changes,
                "accounts": args.accounts,
                "make_and_fsync_s": round(made, 3),
                "log_bytes_before": before,
                "log_bytes_after": after,
                "winners": len(snapshot.winners),
                "compact_s": round(compacted, 4),
                "start_read_s": round(read, 4),
                "snapshot_bytes": len(data),
                "install_s": round(installed, 4),
                "install_due": len(due),
                "load": round(os.getloadavg()[0], 2),
            },
            separators=(",", ":"),
        )
    )


if __name__ == "__main__":
    main()
