"""Authentication, signed upload URLs and rate limits (issue 5). See auth.py for who may do what."""

from .auth import Actor, Authenticator, authenticate_websocket, credential_from

__all__ = ["Actor", "Authenticator", "authenticate_websocket", "credential_from"]
