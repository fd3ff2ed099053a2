from fastapi import APIRouter

from . import admin, admin_console, admin_customers, admin_jobs, agent, agent_desk, live, memory, sessions, ws
from .customer import router as customer_router

api_router = APIRouter()
api_router.include_router(customer_router, prefix="/chat", tags=["智能客服"])
api_router.include_router(memory.router, prefix="/chat", tags=["智能客服"])
api_router.include_router(sessions.router, prefix="/chat", tags=["智能客服"])
api_router.include_router(admin.router, prefix="/admin", tags=["知识库管理"])
api_router.include_router(admin_console.router, prefix="/admin", tags=["运营控制台"])
api_router.include_router(admin_customers.router, prefix="/admin", tags=["客户数据与审计"])
api_router.include_router(admin_jobs.router, prefix="/admin", tags=["后台任务"])
api_router.include_router(ws.router, prefix="/chat", tags=["智能客服"])
api_router.include_router(live.router, prefix="/chat", tags=["智能客服"])
api_router.include_router(agent.router, prefix="/agent", tags=["人工客服"])
api_router.include_router(agent_desk.router, prefix="/agent", tags=["人工客服"])
