"""The CIG's SIP interface (SIF): the trunk towards the PBX, run by ``twistd cig``."""
