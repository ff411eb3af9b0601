"""Calls: relay sessions between attached clients (invite, ringing, talk, hangup)."""
