"""Error kinds every domain shares; the web layer maps them to answers in one place."""

from __future__ import annotations


class DomainError(Exception):
    """A rule of the product said no. Subclasses say which; the unit of work rolls back."""


class NotFound(DomainError):
    """No such thing among the caller's own (someone else's is never "found")."""


class Conflict(DomainError):
    """The request is valid but the thing is not in a state that allows it."""


class InvalidInput(DomainError):
    """Input that breaks a rule, with readable messages per field."""

    # What the JSON answer's "error" says; the messages per field say the rest.
    summary = "invalid input"

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(m for ms in errors.values() for m in ms))
        self.errors = errors


class Forbidden(DomainError):
    """The caller is signed in but their role does not allow this (a member, not an admin)."""
