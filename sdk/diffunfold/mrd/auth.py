"""Who may use ``diffunfold serve``: a shared token, required beyond the loopback interface.

On 127.0.0.1 (the default) only programs on the same machine can connect, and no token is
needed. On any other address the server refuses to start unless it has a token
(``--token-file``) or the operator waives it by name (``--insecure-no-auth``). A client proves
it knows the token with a TEXT message ``token <the token>`` before its HEADER (a CONFIG_FILE
may come first); the comparison takes the same time whatever the token it is given.

The token is not encryption: on a network others can listen to, carry the stream through a
tunnel (SSH port forwarding, or a TLS terminator with client certificates in front of the
server), see docs/security.md.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import socket
from pathlib import Path

from ..errors import InputError

__all__ = [
    "TOKEN_PREFIX",
    "MIN_TOKEN_CHARS",
    "read_token",
    "is_loopback",
    "require_access",
    "token_matches",
    "token_message",
]

TOKEN_PREFIX = "token "
MIN_TOKEN_CHARS = 16


def read_token(path: str | os.PathLike) -> str:
    """The token in a file (surrounding whitespace dropped); at least 16 characters."""
    path = Path(path)
    try:
        if path.stat().st_size > 4096:
            raise InputError(f"{path} is larger than 4 KiB; a token file holds one line")
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise InputError(f"the token file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the token file {path} ({exc})") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise InputError(
            f"the token in {path} must be at least {MIN_TOKEN_CHARS} characters without spaces; "
            'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))" > FILE'
        )
    return token


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one ("" and 0.0.0.0 are not)."""
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def require_access(host: str, token: str | None, insecure_no_auth: bool) -> str | None:
    """Refuse to listen beyond loopback without a token unless waived; returns a warning to log
    (or None)."""
    if token is not None or is_loopback(host):
        return None
    if not insecure_no_auth:
        raise InputError(
            f"--host {host} is not a loopback address: anyone who can reach it could send data "
            "and use this machine; give --token-file FILE (clients send the token), or "
            "--insecure-no-auth on a network where every host is trusted"
        )
    return (
        f"listening on {host} without a token (--insecure-no-auth): any host that can reach this port "
        "can use the server"
    )


def token_message(token: str) -> str:
    """The TEXT a client sends to authenticate."""
    return TOKEN_PREFIX + token


def token_matches(text: str, token: str) -> bool:
    """Whether a TEXT message carries ``token``, compared in constant time."""
    given = text[len(TOKEN_PREFIX) :] if text.startswith(TOKEN_PREFIX) else ""
    # digests of equal length: the time does not depend on the token's length either
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8")).digest(), hashlib.sha256(token.encode("utf-8")).digest()
    )
