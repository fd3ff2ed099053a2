"""Start the API: `python run_server.py` (HOST, PORT, RELOAD=1 and LOG_LEVEL from the environment)."""

import uvicorn

from c_app.config import get_settings

if __name__ == "__main__":
    settings = get_settings()
    uvicorn.run(
        "c_app.main:app",
        host=settings.host,
        port=settings.port,
        reload=settings.reload,
        reload_dirs=["c_app"] if settings.reload else None,
        log_level=settings.log_level.lower(),
    )
