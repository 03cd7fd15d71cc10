"""The labelling web application (Starlette on uvicorn).

Routes (every one needs a labeller's token: ``Authorization: Bearer TOKEN``, or the cookie
the page sets when opened as ``/?token=TOKEN``):

* ``GET /``: the labelling page; ``GET /status``: per-labeller counts and agreement;
* ``GET /api/next``: the next query for this labeller and their progress;
* ``POST /api/answer`` ``{"query_id": int, "choice": "left"|"right"|"equal"|"cant_tell"}``
  (optionally ``"note"``); ``POST /api/undo``: withdraw the last answer;
* ``GET /api/status``: the status as JSON; ``GET /clips/NAME.gif``: a clip.

Bad requests get a 4xx JSON ``{"error": ...}`` and change nothing: 401 without a valid
token, 400 malformed JSON, 413 oversized bodies, 415 a non-JSON body, 422 wrong fields,
404 unknown queries or clips, 403 a query given to someone else, 409 a second answer,
410 an expired query.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from tdimitation.labelling.clips import clip_path
from tdimitation.labelling.store import AnswerRejected, Labeller, LabelStore

MAX_BODY_BYTES = 4096
COOKIE = "tdimitation_label_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> str:
    return resources.files("tdimitation.labelling").joinpath("static", name).read_text("utf-8")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


class _Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _json_body(request: Request) -> dict:
    """The request's JSON object, read at most :data:`MAX_BODY_BYTES` far."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise _Rejected(415, "send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise _Rejected(413, f"the body is limited to {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Rejected(413, f"the body is limited to {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise _Rejected(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _Rejected(422, "the body must be a JSON object")
    return data


def make_app(store: LabelStore, clip_dir: str | os.PathLike) -> Starlette:
    """The labelling application serving ``store``'s queries and the clips in ``clip_dir``."""
    clip_dir = Path(clip_dir)

    async def who(request: Request) -> Labeller | None:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        token = token or request.query_params.get("token") or request.cookies.get(COOKIE)
        return await run_in_threadpool(store.labeller, token)

    def guarded(handler, page: bool = False):
        async def endpoint(request: Request) -> Response:
            labeller = await who(request)
            if labeller is None:
                if page:
                    return HTMLResponse(
                        "<!doctype html><title>Token needed</title><p>Open this page with "
                        "the link you were given (it ends in <code>?token=...</code>).</p>",
                        status_code=401,
                        headers=SECURITY_HEADERS,
                    )
                return _error(401, "a valid labeller token is required")
            try:
                return await handler(request, labeller)
            except (_Rejected, AnswerRejected) as err:
                return _error(err.status, str(err))

        return endpoint

    async def index(request: Request, labeller: Labeller) -> Response:
        page = _static("index.html").replace("{{NAME}}", html.escape(labeller.name))
        response = HTMLResponse(page, headers=SECURITY_HEADERS)
        token = request.query_params.get("token")
        if token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        types = {"app.js": "text/javascript", "style.css": "text/css"}
        if name not in types:
            return _error(404, "no such file")
        return Response(_static(name), media_type=types[name], headers=SECURITY_HEADERS)

    async def next_query(request: Request, labeller: Labeller) -> Response:
        query = await run_in_threadpool(store.next_query, labeller.id)
        progress = await run_in_threadpool(store.progress, labeller.id)
        if query is not None:
            query["left"] = f"/clips/{query.pop('left_clip')}"
            query["right"] = f"/clips/{query.pop('right_clip')}"
        return JSONResponse({"query": query, "progress": progress}, headers=SECURITY_HEADERS)

    async def answer(request: Request, labeller: Labeller) -> Response:
        data = await _json_body(request)
        query_id, choice, note = data.get("query_id"), data.get("choice"), data.get("note", "")
        if (
            not isinstance(query_id, int)
            or isinstance(query_id, bool)
            or not isinstance(choice, str)
        ):
            raise _Rejected(422, "give query_id (an integer) and choice (a string)")
        if not isinstance(note, str):
            raise _Rejected(422, "note must be a string")
        if not -(2**62) < query_id < 2**62:
            raise _Rejected(404, f"unknown query {query_id}")
        out = await run_in_threadpool(store.answer, labeller.id, query_id, choice, note)
        return JSONResponse(out, status_code=201, headers=SECURITY_HEADERS)

    async def undo(request: Request, labeller: Labeller) -> Response:
        await _json_body(request)
        out = await run_in_threadpool(store.undo, labeller.id)
        return JSONResponse(out, headers=SECURITY_HEADERS)

    async def clip(request: Request, labeller: Labeller) -> Response:
        path = clip_path(clip_dir, request.path_params["name"])
        if path is None:
            return _error(404, "no such clip")
        return FileResponse(
            path, media_type="image/gif", headers={"X-Content-Type-Options": "nosniff"}
        )

    async def status_json(request: Request, labeller: Labeller) -> Response:
        return JSONResponse(await run_in_threadpool(store.status), headers=SECURITY_HEADERS)

    async def status_page(request: Request, labeller: Labeller) -> Response:
        status = await run_in_threadpool(store.status)
        mine = status["agreement_by_labeller"]
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{n}</td><td>"
            f"{'n/a' if name not in mine else format(mine[name], '.1%')}</td></tr>"
            for name, n in status["labellers"].items()
        )
        queries = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(status["queries"].items()))
        agreement = status["agreement"]
        shown = "n/a" if agreement is None else f"{agreement:.1%}"
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>Labelling status</title>"
            "<link rel='stylesheet' href='/static/style.css'></head><body><h1>Labelling "
            f"status</h1><p>Queries: {queries or 'none'}</p><p>Agreement on "
            f"{status['double_answered']} pairs answered twice: {shown}</p><table><tr><th>"
            f"Labeller</th><th>Answers</th><th>Agreement</th></tr>{rows}</table>"
            "<p><a href='/'>Back to labelling</a></p></body></html>"
        )
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    routes = [
        Route("/", guarded(index, page=True)),
        Route("/status", guarded(status_page, page=True)),
        Route("/static/{name}", asset),
        Route("/api/next", guarded(next_query)),
        Route("/api/answer", guarded(answer), methods=["POST"]),
        Route("/api/undo", guarded(undo), methods=["POST"]),
        Route("/api/status", guarded(status_json)),
        Route("/clips/{name:path}", guarded(clip)),
    ]
    return Starlette(routes=routes)


def serve(
    database: str, clip_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765
) -> None:
    """Run the labelling server until interrupted."""
    import uvicorn

    store = LabelStore(database)
    uvicorn.run(make_app(store, clip_dir), host=host, port=port, log_level="warning")


__all__ = ["MAX_BODY_BYTES", "make_app", "serve"]
