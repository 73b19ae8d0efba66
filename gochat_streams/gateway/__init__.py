"""The WebSocket gateway: clients in, im-upstream-topic out; im-downstream-topic-{id} in, clients out."""
