"""Connection problems told plainly: URLs with their passwords hidden, TLS failures explained."""

from __future__ import annotations

import re
import ssl

from redis.exceptions import ConnectionError as RedisConnectionError


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and messages.

    Both the ``user:password@`` part and query parameters such as ``password=`` or
    ``ssl_password=`` (redis-py passes unknown query parameters to the connection) are hidden.
    """
    url = _PASSWORD_QUERY.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else f"{scheme}://{user}@{host}"


_PASSWORD_QUERY = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)


def tls_failure(exc: BaseException, url: str) -> str | None:
    """One line explaining a failed TLS connection, or ``None`` if ``exc`` is not one.

    redis-py wraps the ``ssl`` error in a ``ConnectionError`` whose own text can be as vague as
    "EOF occurred in violation of protocol"; the cause is found in the exception chain. A server
    that refuses the client's certificate may also just reset the connection after the handshake
    (TLS 1.3), which is read as that when the URL is ``rediss://``.
    """
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and all(cause is not seen for seen in chain):
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    found = next((e for e in chain if _is_tls_error(e)), None)
    if found is None and url.startswith("rediss://"):
        found = next((e for e in chain if _is_closed(e)), None)
    if found is None:
        return None
    detail = getattr(found, "verify_message", "") or getattr(found, "reason", "") or found
    reason = " ".join(str(detail).split())
    text = str(found)
    if isinstance(found, ssl.SSLCertVerificationError):
        hint = (
            "the server's certificate is not trusted: ssl_ca_certs must name the CA that "
            "signed it, and the host must be one of the names it was issued for"
        )
    elif any(alert in text for alert in ("UNKNOWN_CA", "BAD_CERTIFICATE", "DECRYPT_ERROR")):
        hint = "the server rejected the client certificate (ssl_certfile): it does not trust its CA"
    elif "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:
        hint = "the server does not speak TLS on this port (redis:// is a plain connection)"
    elif isinstance(found, TimeoutError):
        hint = (
            "the server did not answer the TLS handshake; it may not speak TLS on this port "
            "(redis:// is a plain connection)"
        )
    elif (
        _is_closed(found)
        or isinstance(found, ssl.SSLEOFError | ssl.SSLZeroReturnError)
        or any(alert in text for alert in ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE"))
    ):
        hint = (
            "the server closed the connection during or right after the TLS handshake; it may "
            "require a client certificate (ssl_certfile and ssl_keyfile) signed by a CA it trusts"
        )
    else:
        hint = "check ssl_ca_certs, ssl_certfile and ssl_keyfile"
    return f"TLS connection to {redact_url(url)} failed: {hint} ({reason})"


def _is_tls_error(exc: BaseException) -> bool:
    # A server that does not speak TLS leaves the handshake unanswered: a timeout, not an SSLError.
    return isinstance(exc, ssl.SSLError) or (
        isinstance(exc, TimeoutError) and "handshake" in str(exc)
    )


def _is_closed(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionResetError | BrokenPipeError) or (
        isinstance(exc, RedisConnectionError) and "Connection closed by server" in str(exc)
    )
