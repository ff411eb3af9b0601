"""The CIG (interconnect gateway): ``twistd cig`` and ``twistd cig-relay``."""
