"""Clients of the 9P protocol (see raw.py for the message-level one)."""
