"""Optional HTTP API and dashboard (FastAPI): `uvicorn sagaq.api.app:app`."""

from sagaq.api.app import create_app
from sagaq.api.server import serve_in_background

__all__ = ["create_app", "serve_in_background"]
