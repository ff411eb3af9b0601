"""The CRS pool: membership, slot ownership and the pool links.

``core`` is the sans-IO membership and slot-ownership logic; ``sync_core``
and ``sync`` are the synchronization link (8091) and ``db-backup``, which
the CRS runs in a pool of two or more; see ``docs/pool.md``.
"""
