"""Validation errors as people read them."""

from __future__ import annotations

from pydantic import ValidationError


def field_errors(exc: ValidationError) -> dict[str, list[str]]:
    """Pydantic's errors as readable messages per field, the way forms show them."""
    errors: dict[str, list[str]] = {}
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "form"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = "This field is required."
        elif error["type"] == "string_too_long":
            message = f"Use at most {error['ctx']['max_length']} characters."
        errors.setdefault(name, []).append(message)
    return errors
