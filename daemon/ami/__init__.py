"""Asterisk Manager Interface: wire framing, connection, intake."""
