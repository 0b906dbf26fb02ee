"""The aggregator link (MQTT)."""
