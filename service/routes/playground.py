"""GET /: the browser playground, static HTML/CSS/JS shipped in `service/static/` (no build step, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from ..schemas import error_responses

__all__ = ["STATIC_DIR", "mount_static", "router"]

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# The page may only talk to this server: no scripts, styles, fonts or images from anywhere else.
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(tags=["playground"])


@router.get(
    "/",
    response_class=Response,  # not HTMLResponse: that would list the JSON error under text/html
    responses={
        200: {"content": {"text/html": {}}, "description": "the playground page (HTML)"},
        **error_responses(500),
    },
)
async def playground() -> FileResponse:
    """The page is open even with `--api-key`: it asks for the key and sends it on every API call."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": _CSP})


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
