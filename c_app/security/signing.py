"""Signed, expiring URLs for uploaded files, so an `<img src>` works while auth is on.

`/static/uploads/<name>?exp=<unix seconds>&sig=<base64url HMAC-SHA256(secret, "<name>:<exp>")>`.
The secret is URL_SIGNING_SECRET; unset, a random one per process (start-up warns: with several
replicas, a URL signed by one is refused by the others).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from ..config import Settings

_PROCESS_SECRET = secrets.token_bytes(32)


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
    if not exp or not sig or not exp.isdigit() or len(exp) > 12 or len(sig) > 64:
        return False
    if int(exp) < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(_mac(signing_key(settings), name, int(exp)).encode(), sig.encode())


def upload_url(settings: Settings, name: str) -> str:
    """The URL a client uses for an upload: plain without auth, signed with it."""
    path = f"/static/uploads/{name}"
    if settings.auth_mode == "none":
        return path
    exp, sig = sign(settings, name)
    return f"{path}?exp={exp}&sig={sig}"
