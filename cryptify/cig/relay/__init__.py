"""``cig-relay`` (``twistd cig-relay``): the media bridge between the secure side and the PBX."""
