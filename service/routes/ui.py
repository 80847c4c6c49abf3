"""The web console at ``/ui`` (static files from ``service/ui``) and the item thumbnails it shows.

The console's files hold no data, so they are served without a key; every API call the page makes
sends ``Authorization: Bearer <key>`` (kept in the tab's ``sessionStorage``, never in a URL). Only the
files that ship in ``service/ui`` are served (a fixed list, so no path can reach outside it), with a
Content-Security-Policy that lets the page load nothing but its own files and talk to nothing but
this server: the console works offline and cannot pull code from a CDN.

``GET /v1/collections/{name}/thumbnails/{item_id}`` needs a key like every /v1 route. It is not
``.../items/{item_id}/thumbnail`` because item ids may contain ``/`` (a directory job names items by
relative path), so that form would be ambiguous with ``GET .../items/{item_id:path}``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, RedirectResponse

from indexer.thumbnails import Thumbnail, ThumbnailNotFound, Thumbnails
from service.deps import CollectionDep, require_api_key

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
FILES = {p.relative_to(UI_DIR).as_posix(): p for p in sorted(UI_DIR.rglob("*")) if p.suffix in MEDIA_TYPES}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated (ETag) on each load: an upgraded server's console shows at once
}

router = APIRouter(tags=["console"])


@router.get("/ui", include_in_schema=False)
def console_root() -> RedirectResponse:
    return RedirectResponse("/ui/", status_code=307)  # the page's relative module imports need the slash


@router.get("/ui/{path:path}", include_in_schema=False)
def console_file(path: str) -> Response:
    file = FILES.get(path or "index.html")
    if file is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(file, media_type=MEDIA_TYPES[file.suffix], headers=SECURITY_HEADERS)


def _thumbnail_response(thumbnail: Thumbnail, request: Request) -> Response:
    etag = f'"{hashlib.sha256(thumbnail.jpeg).hexdigest()[:32]}"'
    headers = {
        "ETag": etag,
        "Cache-Control": "private, no-cache",  # per key; revalidated, since an upsert may replace the image
        # The source image's size: a face item's payload box is in its pixels, the console scales it.
        "X-Source-Width": str(thumbnail.source_width),
        "X-Source-Height": str(thumbnail.source_height),
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(thumbnail.jpeg, media_type="image/jpeg", headers=headers)


@router.get(
    "/v1/collections/{name}/thumbnails/{item_id:path}",
    dependencies=[Depends(require_api_key)],
    responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG, at most 160 px on its longest side"}},
    response_class=Response,
)
async def get_thumbnail(item_id: str, collection: CollectionDep, request: Request) -> Response:
    """The thumbnail kept when the image item was written; 404 for an unknown item or one without one."""

    def read() -> Thumbnail:
        collection.get(item_id)  # 404 for an item that no longer exists, whatever file is left
        thumbnail = Thumbnails.of(collection.directory).get(item_id)
        if thumbnail is None:
            raise ThumbnailNotFound(collection.name, item_id)
        return thumbnail

    return _thumbnail_response(await anyio.to_thread.run_sync(read), request)
