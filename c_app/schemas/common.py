"""The success envelope most routes answer with: {"success": true, "message": ..., "data": ...}.

    return Envelope[MemoryAdded](message="记忆添加成功", data=MemoryAdded(...))

Each route names its own `data` model, so the OpenAPI document describes every answer exactly.
(Errors have their own envelope: see api/middleware/error_handler.py.)
"""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    success: bool = True
    message: str
    data: T
