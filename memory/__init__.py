"""Memory: for now the immutable, hash-chained audit."""

from memory.base import AuditEntry, AuditLog, AuditReport

__all__ = ["AuditEntry", "AuditLog", "AuditReport"]
