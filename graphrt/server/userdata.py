"""Per-user files the web page keeps on the server: settings, saved workflows, templates.
One user ("default"); every path stays inside <user-dir>/default."""
from __future__ import annotations

import json
import os
from pathlib import Path

from aiohttp import web

from .files import UnsafePath, safe_path

SETTINGS_FILE = "comfy.settings.json"
# Defaults under the user's own settings: no first-run template browser (no templates ship
# here) and no update checks against the internet.
DEFAULT_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False}


def _info(path: Path, root: Path) -> dict:
    st = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": st.st_size, "modified": st.st_mtime,
            "created": st.st_ctime}


class UserData:
    def __init__(self, user_dir: str | os.PathLike):
        self.root = Path(user_dir) / "default"
        for sub in ("workflows", "subgraphs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def _path(self, rel: str) -> Path:
        try:
            return safe_path(self.root, "", rel)
        except UnsafePath as e:
            raise web.HTTPForbidden(text=str(e)) from None

    def settings(self) -> dict:
        p = self.root / SETTINGS_FILE
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            data = {}
        return {**DEFAULT_SETTINGS, **(data if isinstance(data, dict) else {})}

    def save_settings(self, settings: dict):
        p = self.root / SETTINGS_FILE
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(json.dumps(settings, indent=2))
        os.replace(tmp, p)

    def add_routes(self, routes: web.RouteTableDef, read_json):
        @routes.get("/users")
        async def users(request):
            return web.json_response({"storage": "server", "migrated": True})

        @routes.post("/users")
        async def add_user(request):
            return web.json_response("default")

        @routes.get("/settings")
        async def get_settings(request):
            return web.json_response(self.settings())

        @routes.get("/settings/{id}")
        async def get_setting(request):
            return web.json_response(self.settings().get(request.match_info["id"]))

        @routes.post("/settings")
        async def post_settings(request):
            body = await read_json(request)
            self.save_settings({**self.settings(), **body})
            return web.Response(status=200)

        @routes.post("/settings/{id}")
        async def post_setting(request):
            value = await read_json(request, any_type=True)
            settings = self.settings()
            settings[request.match_info["id"]] = value
            self.save_settings(settings)
            return web.Response(status=200)

        @routes.get("/userdata")
        async def list_userdata(request):
            q = request.rel_url.query
            if not q.get("dir"):
                raise web.HTTPBadRequest(text="Directory not provided")
            folder = self._path(q["dir"])
            if not folder.is_dir():
                raise web.HTTPNotFound(text="Directory not found")
            recurse = q.get("recurse", "").lower() == "true"
            full = q.get("full_info", "").lower() == "true"
            split = q.get("split", "").lower() == "true"
            files = sorted(p for p in (folder.rglob("*") if recurse else folder.glob("*")) if p.is_file())
            out = []
            for p in files:
                rel = p.relative_to(folder).as_posix()
                out.append(_info(p, folder) if full else ([rel] + rel.split("/") if split else rel))
            return web.json_response(out)

        @routes.get("/v2/userdata")
        async def list_userdata_v2(request):
            folder = self._path(request.rel_url.query.get("path", ""))
            if not folder.is_dir():
                raise web.HTTPNotFound(text="Directory not found")
            out = []
            for p in sorted(folder.iterdir()):
                entry = {"name": p.name, "path": p.relative_to(self.root).as_posix(),
                         "type": "directory" if p.is_dir() else "file"}
                if p.is_file():
                    st = p.stat()
                    entry.update(size=st.st_size, modified=st.st_mtime)
                out.append(entry)
            return web.json_response(out)

        @routes.get("/userdata/{file}")
        async def get_file(request):
            p = self._path(request.match_info["file"])
            if not p.is_file():
                raise web.HTTPNotFound(text="File not found")
            return web.FileResponse(p)

        @routes.post("/userdata/{file}")
        async def post_file(request):
            p = self._path(request.match_info["file"])
            q = request.rel_url.query
            if q.get("overwrite", "true") == "false" and p.exists():
                raise web.HTTPConflict(text="File already exists")
            body = await request.read()
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.tmp")
            tmp.write_bytes(body)
            os.replace(tmp, p)
            full = q.get("full_info", "false").lower() == "true"
            return web.json_response(_info(p, self.root) if full else p.relative_to(self.root).as_posix())

        @routes.delete("/userdata/{file}")
        async def delete_file(request):
            p = self._path(request.match_info["file"])
            if not p.is_file():
                raise web.HTTPNotFound(text="File not found")
            p.unlink()
            return web.Response(status=204)

        @routes.post("/userdata/{file}/move/{dest}")
        async def move_file(request):
            src, dest = self._path(request.match_info["file"]), self._path(request.match_info["dest"])
            if not src.is_file():
                raise web.HTTPNotFound(text="File not found")
            if request.rel_url.query.get("overwrite", "true") == "false" and dest.exists():
                raise web.HTTPConflict(text="File already exists")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            full = request.rel_url.query.get("full_info", "false").lower() == "true"
            return web.json_response(_info(dest, self.root) if full else dest.relative_to(self.root).as_posix())
