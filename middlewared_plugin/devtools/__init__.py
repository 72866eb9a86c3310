"""Helpers for tests and the demo that drive real local services (zfs-fuse)."""
