"""Workarounds for brokers that speak Kafka's protocol imperfectly. Each is opt-in by URL scheme."""
