"""Pydantic v2 request and response models: the wire contract."""
