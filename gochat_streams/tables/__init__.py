"""Every changelog-backed table of the logic service."""

from .dedup import delivered, delivered_log
from .groups import groups
from .inbox import inbox, inbox_cursors
from .presence import presence

__all__ = ["delivered", "delivered_log", "groups", "inbox", "inbox_cursors", "presence"]
