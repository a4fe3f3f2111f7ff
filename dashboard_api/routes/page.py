"""GET /: the federation page, from the static folder app.py serves at /static."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    """The federation page (static HTML and JS reading this API; nothing to build)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
