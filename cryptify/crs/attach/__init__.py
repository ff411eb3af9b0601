"""Attach: client connections, their attach state machine and who is attached."""
