"""The Simple index (PEP 503 HTML and PEP 691 JSON) and the files it links to, with the
headers caches and pip need."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

from fastapi import (
    APIRouter,
    HTTPException,
    Request,
)
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import select

from common.models import OutputFile, Project, Release
from common.names import BadName, normalize_project
from common.wheels import BadWheel, parse_name
from master.index import pages as index
from master.index.static import HTML_PAGE, JSON_PAGE
from master.web.api_deps import (
    DB,
)
from master.web.context import MasterContext

log = logging.getLogger(__name__)


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: a list of (possibly weak) tags, or *."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def router(ctx: MasterContext) -> APIRouter:
    """The index pages and the files they link to."""
    settings = ctx.settings
    storage = ctx.storage
    static = ctx.static
    app = APIRouter()

    def _simple(request: Request, content: str, media: str, serial: int) -> Response:
        """A Simple page with what caches need: a strong ETag of its bytes (so pip and
        proxies revalidate for a 304), a max-age, Vary on Accept, and the serial."""
        body = content.encode()
        etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
        headers = {
            "Vary": "Accept",
            "ETag": etag,
            "Cache-Control": f"max-age={settings.index.page_max_age}, public",
            "X-PyPI-Last-Serial": str(serial),
        }
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=media, headers=headers)

    def _negotiate(request: Request) -> str:
        try:
            return index.negotiate(
                request.headers.get("accept"), request.query_params.get("format")
            )
        except index.NotAcceptable as exc:
            raise HTTPException(406, str(exc)) from exc

    def get_and_head(path: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """GET in the OpenAPI document and HEAD beside it (kept out of the document: one
        route for both methods would give two operations the same operationId)."""

        def register(endpoint: Callable[..., Response]) -> Callable[..., Response]:
            app.head(path, include_in_schema=False)(endpoint)
            return app.get(path)(endpoint)

        return register

    def root_page(index_name: str, request: Request, db: DB) -> Response:
        """An index's project list: from its static tree where the master keeps one (the
        tree keeps the list current without a scan of every file), else rendered."""
        media = _negotiate(request)
        serial = index.last_serial(db)
        if static is not None:
            static.sync(db)
            page = static.tree(index_name).simple / (
                JSON_PAGE if media == index.JSON_TYPE else HTML_PAGE
            )
            try:
                return _simple(request, page.read_text(), media, serial)
            except OSError:
                pass  # a tree not written yet (its sync failed): rendered instead
        names = index.published_projects(db, index_name)
        if media == index.JSON_TYPE:
            return _simple(request, index.render_root_json(names), media, serial)
        return _simple(request, index.render_root_html(names), media, serial)

    @get_and_head("/simple/")
    def simple_root(request: Request, db: DB) -> Response:
        return root_page("", request, db)

    def distribution(index: str) -> str:
        """A distribution target's index name, or 404: only configured distribution
        targets have an index of their own (a disabled one keeps serving its wheels)."""
        target = settings.targets.get(index)
        if target is None or target.kind != "distribution":
            raise HTTPException(404, f"no distribution index {index}")
        return index

    def project_page(index_name: str, name: str, request: Request, db: DB) -> Response:
        try:
            normal = normalize_project(name)
        except BadName as exc:
            raise HTTPException(404, str(exc)) from exc
        if normal != name:
            query = f"?{request.url.query}" if request.url.query else ""
            prefix = f"/{index_name}" if index_name else ""
            return RedirectResponse(f"{prefix}/simple/{normal}/{query}", status_code=301)
        media = _negotiate(request)
        project = db.scalar(select(Project).where(Project.name == normal))
        files = index.project_files(db, project, index_name) if project else []
        if project is None or not files:
            raise HTTPException(404, f"no files for {normal}")
        serial = index.last_serial(db, project.id)
        if media == index.JSON_TYPE:
            return _simple(request, index.render_project_json(normal, files, serial), media, serial)
        return _simple(request, index.render_project_html(normal, files, serial), media, serial)

    def file_response(
        index_name: str, name: str, filename: str, request: Request, db: DB
    ) -> Response:
        metadata = filename.endswith(".metadata")
        wheel_name = filename.removesuffix(".metadata")
        try:
            parse_name(wheel_name)
            normal = normalize_project(name)
        except (BadWheel, BadName) as exc:
            raise HTTPException(404, str(exc)) from exc
        output = db.scalar(
            select(OutputFile)
            .join(Release, OutputFile.release_id == Release.id)
            .where(OutputFile.filename == wheel_name, *index.served(index_name))
        )
        if output is None or output.release.project.name != normal:
            raise HTTPException(404, "no such file")
        # A published file never changes: its hash is its ETag and caches may keep it.
        digest = output.metadata_sha256 if metadata else output.sha256
        headers = {"ETag": f'"{digest}"', "Cache-Control": "max-age=31536000, immutable"}
        if etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        if metadata:
            return FileResponse(
                storage.metadata_path(normal, wheel_name), media_type="text/plain", headers=headers
            )
        return FileResponse(
            storage.wheel_path(normal, wheel_name),
            media_type="application/octet-stream",
            filename=wheel_name,
            headers=headers,
        )

    @app.get("/api/v1/indexes")
    def indexes() -> dict[str, Any]:
        """/simple/ and every distribution target's own index, with the systems each
        serves: `armwheels doctor` finds its device's own index here."""
        found: list[dict[str, Any]] = [{"path": "/simple/", "kind": "manylinux"}]
        for name, target in sorted(settings.targets.items()):
            if target.kind == "distribution":
                found.append(
                    {
                        "path": f"/{name}/simple/",
                        "kind": "distribution",
                        "name": name,
                        "arch": target.arch,
                        "float_abi": target.float_abi if target.arch == "armv7l" else None,
                        "machines": target.machines,
                        "python_tags": target.python_tags,
                        "enabled": target.enabled,
                    }
                )
        return {"indexes": found}

    @get_and_head("/simple/{name}/")
    def simple_project(name: str, request: Request, db: DB) -> Response:
        return project_page("", name, request, db)

    @get_and_head("/simple/{name}")
    def simple_project_slash(name: str) -> RedirectResponse:
        return RedirectResponse(f"/simple/{name}/", status_code=301)

    @get_and_head("/files/{name}/{filename}")
    def files(name: str, filename: str, request: Request, db: DB) -> Response:
        return file_response("", name, filename, request, db)

    # A distribution target's own index: linux_* wheels built on exactly that
    # distribution, which /simple/ never lists (a manylinux client is never offered one).
    @get_and_head("/{dist}/simple/")
    def distribution_root(dist: str, request: Request, db: DB) -> Response:
        return root_page(distribution(dist), request, db)

    @get_and_head("/{dist}/simple/{name}/")
    def distribution_project(dist: str, name: str, request: Request, db: DB) -> Response:
        index_name = distribution(dist)
        return project_page(index_name, name, request, db)

    @get_and_head("/{dist}/simple/{name}")
    def distribution_project_slash(dist: str, name: str) -> RedirectResponse:
        return RedirectResponse(f"/{distribution(dist)}/simple/{name}/", status_code=301)

    @get_and_head("/{dist}/files/{name}/{filename}")
    def distribution_files(
        dist: str, name: str, filename: str, request: Request, db: DB
    ) -> Response:
        return file_response(distribution(dist), name, filename, request, db)

    return app
