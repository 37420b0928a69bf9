"""Composing MIME, per-recipient copies, SMTP delivery and the outbox worker."""
