"""The CRS pool: membership, slot ownership and (later) the pool links.

``core`` is the sans-IO membership and slot-ownership logic; see
``docs/pool.md``.  Nothing here is wired into the running CRS yet.
"""
