"""Every changelog-backed table of the logic service."""

from .groups import groups
from .inbox import inbox
from .presence import presence

__all__ = ["groups", "inbox", "presence"]
