"""What a failed TLS connection to a mail server is called, in fixed words.

SMTP (sending, Test connection) and IMAP (sync, Test connection) say the same
things: OpenSSL's own text and whatever the server sent stay in the log, so that
the answer never tells one kind of service from another (issue 8: no scanning).
"""

from __future__ import annotations

import ssl


def ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error somewhere down ``exc``'s chain of causes, if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def tls_failure_reason(exc: BaseException, *, after_starttls: bool = False) -> str:
    """A fixed explanation of a failed handshake."""
    cause = ssl_cause(exc)
    if isinstance(cause, ssl.SSLCertVerificationError):
        if cause.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return "the server's certificate is for another host name"
        if cause.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
            return "the server's certificate has expired"
        return "the server's certificate is not signed by an authority this machine trusts"
    if after_starttls:
        return "the TLS handshake after STARTTLS did not complete"
    # Garbage where a handshake was expected and no answer at all read the same:
    # which one it was would tell a non-TLS service from a silent one.
    return "the TLS handshake did not complete; this port may expect STARTTLS or no encryption"


def not_a_mail_server(where: str, *, implicit_tls: bool, usual_tls_port: int) -> str:
    """The one sentence for a service that did not answer as a mail server."""
    hint = (
        ""
        if implicit_tls
        else f"; if the port expects implicit TLS (usually {usual_tls_port}), choose TLS"
    )
    return f"{where} did not answer as a mail server{hint}."
