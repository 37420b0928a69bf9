"""Mailbox passwords encrypted at rest with the data folder's credentials key."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken


class CredentialBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) over a 32-byte key from secrets.json."""

    def __init__(self, key: bytes) -> None:
        import base64

        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, secret: str) -> str:
        return "" if not secret else self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        if not sealed:
            return ""
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except InvalidToken as exc:
            raise ValueError(
                "the stored mailbox password cannot be decrypted with this data folder's key"
            ) from exc
