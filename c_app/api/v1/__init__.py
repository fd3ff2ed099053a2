from fastapi import APIRouter

from .customer import router as customer_router

api_router = APIRouter()
api_router.include_router(customer_router, prefix="/chat", tags=["智能客服"])
