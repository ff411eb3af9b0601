"""
Operations: reload without restart (SIGHUP) and the Prometheus metrics
endpoint, for the CRS and the CIG.

:mod:`cryptify.ops.reload` (the diff of two configurations, the SIGHUP
service) and :mod:`cryptify.ops.metrics` (the HTTP endpoint, the cached
values of Redis and relay queries) know no server; :mod:`cryptify.ops.crs`
and :mod:`cryptify.ops.cig` say, for each server, which directives change
live, how they are applied to the running objects, and what is measured.
See ``docs/operations.md``.
"""
