from .customer import router

__all__ = ["router"]
