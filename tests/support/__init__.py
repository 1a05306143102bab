"""Shared test helpers: real local servers that tests talk to over 127.0.0.1."""
