"""gsm: an asyncio GSM modem driver (AT commands, SMS PDU encoding, simulator)."""
