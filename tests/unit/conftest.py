"""Unit tests never reach a broker: the app is built with in-memory tables."""

import os

os.environ.setdefault("GOCHAT_TABLE_STORE", "memory://")
