"""Every changelog-backed table of the logic service."""

from .presence import presence

__all__ = ["presence"]
