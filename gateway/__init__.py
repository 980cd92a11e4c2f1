"""smsgw: an SMPP carrier gateway daemon (MQTT in, durable store, SMPP out, receipts and events back)."""

__version__ = "0.1.0"
