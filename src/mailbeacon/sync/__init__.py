"""Mailbox sync over IMAP: the client, and what incoming mail is (reply, auto-reply, bounce)."""
