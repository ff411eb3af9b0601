"""What the pool synchronization tests share: Redis INFO replication
answers and a RESP encoder."""

from __future__ import annotations


def resp(*words: bytes) -> bytes:
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)


INFO_UP = """# Replication\r
role:slave\r
master_host:127.0.0.1\r
master_port:40123\r
master_link_status:up\r
master_last_io_seconds_ago:2\r
master_sync_in_progress:0\r
slave_read_repl_offset:4470\r
slave_repl_offset:4470\r
slave_priority:100\r
connected_slaves:0\r
"""


INFO_DOWN = """# Replication\r
role:slave\r
master_link_status:down\r
master_last_io_seconds_ago:-1\r
master_sync_in_progress:0\r
slave_repl_offset:4470\r
master_link_down_since_seconds:17\r
"""
