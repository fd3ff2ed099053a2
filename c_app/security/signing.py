"""Signed, expiring URLs for uploaded files, so an `<img src>` works while auth is on.

`/static/uploads/<name>?exp=<unix seconds>&sig=<base64url HMAC-SHA256(secret, "<name>:<exp>")>`.
The secret is URL_SIGNING_SECRET; unset, a random one per process (start-up warns: with several
replicas, a URL signed by one is refused by the others).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time

from ..config import Settings

_PROCESS_SECRET = secrets.token_bytes(32)
# What `sign` writes, and nothing else: ASCII digits only (str.isdigit() and int() also take "²", "١٢٣",
# "１２３", signs, spaces and underscores), at most 12 of them; an unpadded base64url SHA-256 MAC.
_EXP = re.compile(r"[0-9]{1,12}")
_SIG = re.compile(r"[A-Za-z0-9_-]{43}")


def signing_key(settings: Settings) -> bytes:
    if settings.url_signing_secret is not None and settings.url_signing_secret.get_secret_value():
        return settings.url_signing_secret.get_secret_value().encode()
    return _PROCESS_SECRET


def _mac(key: bytes, name: str, exp: int) -> str:
    digest = hmac.new(key, f"{name}:{exp}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(settings: Settings, name: str, *, now: float | None = None) -> tuple[int, str]:
    exp = int(now if now is not None else time.time()) + settings.upload_url_ttl
    return exp, _mac(signing_key(settings), name, exp)


def verify(
    settings: Settings, name: str, exp: str | None, sig: str | None, *, now: float | None = None
) -> bool:
    """Whether `exp`/`sig` (straight from the query string) sign `name` and have not expired.
    Anything malformed is simply not a valid signature."""
    if exp is None or sig is None or not _EXP.fullmatch(exp) or not _SIG.fullmatch(sig):
        return False
    expires = int(exp)
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(_mac(signing_key(settings), name, expires).encode(), sig.encode())


def upload_url(settings: Settings, name: str) -> str:
    """The URL a client uses for an upload: plain without auth, signed with it."""
    path = f"/static/uploads/{name}"
    if settings.auth_mode == "none":
        return path
    exp, sig = sign(settings, name)
    return f"{path}?exp={exp}&sig={sig}"
