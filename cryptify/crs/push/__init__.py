"""Push wake-ups in the CRS: the rules (core) and the link to the push server (wiring)."""
