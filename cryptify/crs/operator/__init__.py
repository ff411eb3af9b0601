"""The operator side: management responders, ``crs-cli``, statistics, the CRS state."""
