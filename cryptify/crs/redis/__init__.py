"""Redis for the CRS: the supervised instances, their supervisor, the stores and batching."""
