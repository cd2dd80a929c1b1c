"""The explorer and dashboard the node serves: HTML pages, their static files, and a
stream of server-sent events (docs/explorer.md)."""

from archivas.explorer.app import Explorer

__all__ = ["Explorer"]
