"""Workarounds for faults in the libraries we build on (Faust, aiokafka), and for brokers
that speak Kafka's protocol imperfectly (opt-in by URL scheme)."""
