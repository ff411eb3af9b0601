"""An instance's worker processes (``workers N`` in crs-local.conf; docs/workers.md)."""
