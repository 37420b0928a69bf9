"""Users, sessions, organisations, mailbox connections."""
