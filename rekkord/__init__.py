"""rekkord: encrypted, deduplicating backups where servers hold only a write key."""

__version__ = "0.1.0"
