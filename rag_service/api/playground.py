"""The playground page at `/`: static HTML and JavaScript, no build step. The page holds no
data; the API calls it makes carry the token the user enters."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from litestar import Response, get


@cache
def page() -> str:
    return files("rag_service").joinpath("static/playground.html").read_text(encoding="utf-8")


@get("/", exclude_from_auth=True, include_in_schema=False)
async def playground() -> Response[str]:
    return Response(
        page(),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; connect-src 'self'",
            "X-Content-Type-Options": "nosniff",
        },
    )


ROUTES = [playground]
