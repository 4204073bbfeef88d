"""The HTTP and WebSocket routes, speaking ComfyUI's API; every route is served both
as /route and /api/route, as ComfyUI does."""
from __future__ import annotations

import io
import json
import logging
import mimetypes
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from ..registry import get_node_class
from . import frontend
from .files import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, UnsafePath, clean_filename, media_kind, place_upload,
                    safe_path, split_annotation, staging_file)
from .hub import Hub
from .jobs import Job, JobStore
from .models import ModelFolders
from .object_info import INPUT_FOLDER, all_node_info, node_info
from .prompts import check_prompt
from .userdata import UserData

log = logging.getLogger("graphrt.server")
VERSION = "0.1.0"
_FORCE_DOWNLOAD = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                   "application/javascript", "text/css", "image/svg+xml", "text/xml", "application/xml"}


@dataclass
class ServerConfig:
    listen: str = "127.0.0.1"
    port: int = 8188
    models_dir: str = "models"
    output_dir: str = "output"
    input_dir: str = "input"
    temp_dir: str = "temp"
    user_dir: str = "user"
    queue_db: str | None = None          # default: <user_dir>/queue.sqlite3
    cache: str = "last-run"
    max_upload_mb: float = 100.0
    front_end_root: str | None = None
    cache_dir: str | None = None         # the output cache's disk tier (None: memory only)
    cache_dir_bytes: int | None = None
    memory_budget: str | None = None     # host memory models load under ($GRAPHRT_MEMORY_BUDGET); None: default


class BadRequest(Exception):
    """A malformed request: answered 400 with this message."""


def _bad(message: str, status: int = 400, type_: str = "bad_request") -> web.Response:
    err = {"type": type_, "message": message, "details": message, "extra_info": {}}
    return web.json_response({"error": err, "node_errors": {}}, status=status)


async def read_json(request: web.Request, required: bool = True, any_type: bool = False):
    body = await request.read()
    if not body.strip():
        if required:
            raise BadRequest("the request body is empty; send a JSON object")
        return {}
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise BadRequest(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not any_type and not isinstance(data, dict):
        raise BadRequest(f"expected a JSON object, got {type(data).__name__}")
    return data


@web.middleware
async def _errors(request, handler):
    try:
        return await handler(request)
    except BadRequest as e:
        return _bad(str(e))
    except web.HTTPException:
        raise
    except Exception as e:  # never a traceback to the client; the log keeps it
        log.exception("error in %s %s", request.method, request.path)
        return _bad(f"internal error: {type(e).__name__}: {e}", status=500, type_="server_error")


@web.middleware
async def _same_origin(request, handler):
    """Refuse requests a page of another site makes to this server from the user's browser."""
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        host = request.headers.get("Host", "")
        if urlsplit(origin).netloc.lower() != host.lower():
            return web.Response(status=403, text="cross-origin request refused")
    return await handler(request)


@web.middleware
async def _no_cache_api(request, handler):
    response = await handler(request)
    if request.path.endswith((".js", ".css", "index.html")) or request.path == "/":
        response.headers.setdefault("Cache-Control", "no-cache")
    return response


def _job_status(job: Job) -> str:
    return {"running": "in_progress", "pending": "pending"}.get(job.state, job.result or "completed")


class Server:
    def __init__(self, cfg: ServerConfig, executor, store: JobStore):
        from .worker import Worker
        self.cfg = cfg
        self.ex, self.store = executor, store
        self.dirs = {"output": Path(cfg.output_dir).resolve(), "input": Path(cfg.input_dir).resolve(),
                     "temp": Path(cfg.temp_dir).resolve()}
        for d in self.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        self.models = ModelFolders(cfg.models_dir)
        self.models.create()
        self.max_upload = int(cfg.max_upload_mb * 1024 * 1024)
        self.web_root = frontend.find_frontend(cfg.front_end_root)
        self.features = {"supports_preview_metadata": True, "max_upload_size": self.max_upload}
        self.hub = Hub(self.features)
        self.userdata = UserData(cfg.user_dir)
        self.worker = Worker(store, self.hub, executor, self.dirs, self.resolve, self.queue_changed)
        self.app = self._build()

    # -- helpers ----------------------------------------------------------------------------
    def resolve(self, folder: str, name: str):
        if folder in self.dirs:
            try:
                p = safe_path(self.dirs[folder], "", name)
            except UnsafePath:
                return None
            return p if p.is_file() else None
        return self.models.resolve(folder, name)

    def list_folder(self, folder: str) -> list[str]:
        if folder == INPUT_FOLDER:
            root = self.dirs["input"]
            media = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
            return sorted((p.relative_to(root).as_posix() for p in root.rglob("*")
                           if p.is_file() and p.suffix.lower() in media and not p.name.startswith(".")),
                          key=str.lower)
        return self.models.files(folder) if folder in self.models.names() else []

    def queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.store.remaining()}}

    def queue_changed(self):
        self.hub.send("status", {"status": self.queue_info()})

    # -- routes -------------------------------------------------------------------------------
    def _build(self) -> web.Application:
        routes = web.RouteTableDef()
        self._routes(routes)
        self.userdata.add_routes(routes, read_json)
        app = web.Application(client_max_size=max(self.max_upload, 1 << 20) + (1 << 20),
                              middlewares=[_same_origin, _errors, _no_cache_api])
        doubled = web.RouteTableDef()
        for r in routes:
            doubled.route(r.method, "/api" + r.path)(r.handler)
        app.add_routes(doubled)
        app.add_routes(routes)
        if self.web_root is not None:
            app.add_routes([web.static("/", self.web_root)])
        return app

    def _routes(self, routes: web.RouteTableDef):  # noqa: C901 (one place lists every route)
        s = self

        @routes.get("/")
        async def index(request):
            if s.web_root is None:
                return web.Response(text=frontend.MISSING_PAGE, content_type="text/html")
            return web.FileResponse(s.web_root / "index.html", headers={"Cache-Control": "no-cache"})

        @routes.get("/ws")
        async def websocket(request):
            ws = web.WebSocketResponse(heartbeat=30)
            await ws.prepare(request)
            sid = request.rel_url.query.get("clientId") or uuid.uuid4().hex
            s.hub.add(sid, ws)
            try:
                await ws.send_str(json.dumps({"type": "status", "data": {"status": s.queue_info(), "sid": sid}}))
                job, node = s.worker.job, s.worker.node
                if job is not None and node is not None and job.extra_data.get("client_id") == sid:
                    await ws.send_str(json.dumps({"type": "executing", "data": {
                        "node": node, "display_node": node, "prompt_id": job.prompt_id}}))
                first = True
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT:
                        try:
                            data = json.loads(msg.data)
                        except ValueError:
                            continue
                        if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                            flags = data.get("data")
                            s.hub.flags[sid] = flags if isinstance(flags, dict) else {}
                            await ws.send_str(json.dumps({"type": "feature_flags", "data": s.features}))
                        first = False
            finally:
                s.hub.remove(sid, ws)
            return ws

        # -- the queue ------------------------------------------------------------------------
        @routes.get("/prompt")
        async def get_prompt(request):
            return web.json_response(s.queue_info())

        @routes.post("/prompt")
        async def post_prompt(request):
            body = await read_json(request)
            if "prompt" not in body:
                return web.json_response({"error": {"type": "no_prompt", "message": "No prompt provided",
                                                    "details": "No prompt provided", "extra_info": {}},
                                          "node_errors": {}}, status=400)
            number = body.get("number")
            if number is not None:
                try:
                    number = float(number)
                except (TypeError, ValueError):
                    raise BadRequest(f"'number' must be a number, got {number!r}") from None
            prompt_id = str(body.get("prompt_id") or uuid.uuid4())
            if s.store.exists(prompt_id):
                raise BadRequest(f"prompt_id {prompt_id} is already queued or in the history")
            extra = body.get("extra_data") or {}
            if not isinstance(extra, dict):
                raise BadRequest("'extra_data' must be a JSON object")
            targets = body.get("partial_execution_targets")
            if targets is not None and not isinstance(targets, list):
                raise BadRequest("'partial_execution_targets' must be a list of node ids")
            ok, error, outputs, node_errors, prompt = check_prompt(body["prompt"], targets, s.resolve)
            if not ok:
                log.info("invalid prompt: %s", error["message"])
                return web.json_response({"error": error, "node_errors": node_errors}, status=400)
            if body.get("client_id") is not None:
                extra["client_id"] = str(body["client_id"])
            extra.setdefault("create_time", int(time.time() * 1000))
            number = s.store.add(prompt_id, prompt, extra, outputs, number=number, front=bool(body.get("front")))
            s.queue_changed()
            return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

        @routes.get("/queue")
        async def get_queue(request):
            return web.json_response({"queue_running": [j.queue_item() for j in s.store.running()],
                                      "queue_pending": [j.queue_item() for j in s.store.pending()]})

        @routes.post("/queue")
        async def post_queue(request):
            body = await read_json(request)
            if body.get("clear"):
                s.store.clear_pending()
            if "delete" in body:
                ids = body["delete"]
                if not isinstance(ids, list):
                    raise BadRequest("'delete' must be a list of prompt ids")
                s.store.delete_pending(ids)
            s.queue_changed()
            return web.Response(status=200)

        @routes.post("/interrupt")
        async def post_interrupt(request):
            body = await read_json(request, required=False)
            s.worker.interrupt(body.get("prompt_id"))
            return web.Response(status=200)

        @routes.post("/free")
        async def post_free(request):
            body = await read_json(request, required=False)
            s.worker.request_free(unload_models=bool(body.get("unload_models")),
                                  free_memory=bool(body.get("free_memory")))
            return web.Response(status=200)

        # -- history -----------------------------------------------------------------------------
        def _int(request, name, default):
            value = request.rel_url.query.get(name)
            if value is None:
                return default
            try:
                return int(value)
            except ValueError:
                raise BadRequest(f"'{name}' must be an integer, got {value!r}") from None

        @routes.get("/history")
        async def get_history(request):
            jobs = s.store.history(_int(request, "max_items", None), _int(request, "offset", -1))
            return web.json_response({j.prompt_id: j.history_entry() for j in jobs})

        @routes.get("/history/{prompt_id}")
        async def get_history_item(request):
            job = s.store.get(request.match_info["prompt_id"])
            return web.json_response({job.prompt_id: job.history_entry()} if job and job.state == "done" else {})

        @routes.post("/history")
        async def post_history(request):
            body = await read_json(request)
            if body.get("clear"):
                s.store.clear_history()
            if "delete" in body:
                if not isinstance(body["delete"], list):
                    raise BadRequest("'delete' must be a list of prompt ids")
                s.store.delete_history(body["delete"])
            return web.Response(status=200)

        # -- jobs (the web page's queue and history panels) ----------------------------------------
        def job_summary(job: Job) -> dict:
            outputs = job.outputs or {}
            refs = [(nid, r) for nid, o in outputs.items() for r in o.get("images", [])]
            preview = None
            if refs:
                nid, r = refs[0]
                kind = "video" if Path(r["filename"]).suffix.lower() in VIDEO_EXTENSIONS else "images"
                preview = {**r, "nodeId": nid, "mediaType": kind}
            workflow = ((job.extra_data.get("extra_pnginfo") or {}).get("workflow") or {})
            ms = lambda t: None if t is None else int(t * 1000)  # noqa: E731
            return {"id": job.prompt_id, "status": _job_status(job),
                    "create_time": job.extra_data.get("create_time") or ms(job.created),
                    "execution_start_time": ms(job.started), "execution_end_time": ms(job.finished),
                    "preview_output": preview, "outputs_count": len(refs), "previewable_outputs_count": len(refs),
                    "execution_error": job.error, "workflow_id": workflow.get("id") if isinstance(workflow, dict)
                    else None, "priority": job.number}

        @routes.get("/jobs")
        async def get_jobs(request):
            statuses = [x for x in request.rel_url.query.get(
                "status", "in_progress,pending,completed,failed,cancelled").split(",") if x]
            limit, offset = max(0, _int(request, "limit", 200)), max(0, _int(request, "offset", 0))
            jobs, total = s.store.jobs(statuses, limit, offset)
            return web.json_response({"jobs": [job_summary(j) for j in jobs], "pagination": {
                "offset": offset, "limit": limit, "total": total, "has_more": offset + len(jobs) < total}})

        @routes.get("/jobs/{prompt_id}")
        async def get_job(request):
            job = s.store.get(request.match_info["prompt_id"])
            if job is None:
                raise web.HTTPNotFound(text="no such job")
            pnginfo = job.extra_data.get("extra_pnginfo") or {}
            return web.json_response({**job_summary(job), "workflow": {"prompt": job.prompt, "extra_data": {
                "extra_pnginfo": {"workflow": pnginfo.get("workflow")}}}, "outputs": job.outputs or {},
                "update_time": int((job.finished or job.started or job.created) * 1000),
                "execution_status": job.status, "execution_meta": job.meta or {}})

        def cancel(prompt_id: str) -> bool:
            return bool(s.store.delete_pending([prompt_id])) or s.worker.interrupt(prompt_id)

        @routes.post("/jobs/{prompt_id}/cancel")
        async def cancel_job(request):
            cancel(request.match_info["prompt_id"])
            s.queue_changed()
            return web.Response(status=200)

        @routes.post("/jobs/cancel")
        async def cancel_jobs(request):
            body = await read_json(request)
            ids = body.get("job_ids", [])
            if not isinstance(ids, list):
                raise BadRequest("'job_ids' must be a list")
            for i in ids:
                cancel(str(i))
            s.queue_changed()
            return web.Response(status=200)

        # -- node schemas and folders --------------------------------------------------------------
        @routes.get("/object_info")
        async def object_info(request):
            return web.json_response(all_node_info(s.list_folder))

        @routes.get("/object_info/{node_class}")
        async def object_info_one(request):
            cls = get_node_class(request.match_info["node_class"])
            return web.json_response({} if cls is None else {cls.class_name(): node_info(cls, s.list_folder)})

        @routes.get("/models")
        async def models(request):
            return web.json_response(s.models.names())

        @routes.get("/models/{folder}")
        async def models_folder(request):
            folder = request.match_info["folder"]
            if folder not in s.models.names():
                raise web.HTTPNotFound(text=f"no model folder {folder!r}")
            return web.json_response(s.models.files(folder))

        @routes.get("/experiment/models")
        async def experiment_models(request):
            return web.json_response([{"name": f, "folders": [str(p) for p in s.models.paths(f)]}
                                      for f in s.models.names()])

        @routes.get("/experiment/models/{folder}")
        async def experiment_models_folder(request):
            folder = request.match_info["folder"]
            if folder not in s.models.names():
                raise web.HTTPNotFound(text=f"no model folder {folder!r}")
            return web.json_response([{"name": n, "pathIndex": 0} for n in s.models.files(folder)])

        @routes.get("/embeddings")
        async def embeddings(request):
            return web.json_response([os.path.splitext(n)[0] for n in s.models.files("embeddings")])

        @routes.get("/view_metadata/{folder}")
        async def view_metadata(request):
            name = request.rel_url.query.get("filename", "")
            path = s.models.resolve(request.match_info["folder"], name) if name.endswith(".safetensors") else None
            if path is None or not path.is_file():
                raise web.HTTPNotFound()
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = f.read(n) if 0 < n <= (1 << 20) else b""
            try:
                meta = json.loads(header).get("__metadata__")
            except ValueError:
                meta = None
            if meta is None:
                raise web.HTTPNotFound()
            return web.json_response(meta)

        # -- files -------------------------------------------------------------------------------
        @routes.get("/view")
        async def view(request):
            q = request.rel_url.query
            if not q.get("filename"):
                raise BadRequest("'filename' is required")
            filename, annotated = split_annotation(q["filename"])
            kind = annotated or q.get("type") or "output"
            if kind not in s.dirs:
                raise BadRequest(f"'type' must be one of {', '.join(s.dirs)}")
            try:
                if "/" in filename.replace("\\", "/").strip("/") or filename in ("..", "."):
                    raise UnsafePath("the file name must not contain a folder; use 'subfolder'")
                path = safe_path(s.dirs[kind], q.get("subfolder", ""), filename)
            except UnsafePath as e:
                return web.Response(status=403 if "outside" in str(e) else 400, text=f"refused: {e}")
            if not path.is_file():
                raise web.HTTPNotFound(text="file not found")
            return _file_response(path, q)

        @routes.post("/upload/image")
        async def upload_image(request):
            return await s._upload(request)

        @routes.post("/upload/mask")
        async def upload_mask(request):
            return await s._upload(request, mask=True)

        # -- about the server ----------------------------------------------------------------------
        @routes.get("/system_stats")
        async def system_stats(request):
            import psutil
            vm = psutil.virtual_memory()
            return web.json_response({
                "system": {"os": os.name, "ram_total": vm.total, "ram_free": vm.available,
                           "comfyui_version": VERSION, "graphrt_version": VERSION,
                           "required_frontend_version": frontend.frontend_version() or "",
                           "python_version": sys.version, "pytorch_version": "", "embedded_python": False,
                           "argv": sys.argv},
                "devices": [{"name": platform.processor() or "cpu", "type": "cpu", "index": 0,
                             "vram_total": 0, "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0}]})

        @routes.get("/features")
        async def features(request):
            return web.json_response(s.features)

        @routes.get("/extensions")
        async def extensions(request):
            return web.json_response(frontend.extension_scripts(s.web_root))

        @routes.get("/i18n")
        async def i18n(request):
            return web.json_response({})

        @routes.get("/workflow_templates")
        async def workflow_templates(request):
            return web.json_response({})

        @routes.get("/templates/index.json")
        async def templates_index(request):      # no template package: an empty library
            return web.json_response([])

        @routes.get("/templates/index_logo.json")
        async def templates_logos(request):
            return web.json_response({})

        @routes.get("/global_subgraphs")
        async def global_subgraphs(request):
            return web.json_response({})

        @routes.get("/node_replacements")
        async def node_replacements(request):
            return web.json_response({})

        @routes.get("/internal/logs")
        async def internal_logs(request):
            return web.json_response("")

        @routes.get("/internal/logs/raw")
        async def internal_logs_raw(request):
            return web.json_response({"entries": [], "size": {"cols": 80, "rows": 24}})

        @routes.patch("/internal/logs/subscribe")
        async def internal_logs_subscribe(request):
            return web.Response(status=200)

        @routes.get("/internal/folder_paths")
        async def internal_folder_paths(request):
            return web.json_response({f: [str(p) for p in s.models.paths(f)] for f in s.models.names()})

        @routes.get("/internal/files/{directory_type}")
        async def internal_files(request):
            kind = request.match_info["directory_type"]
            if kind not in s.dirs:
                return web.json_response({"error": "Invalid directory type"}, status=400)
            root = s.dirs[kind]
            files = sorted((p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")),
                           key=lambda p: p.stat().st_mtime, reverse=True)
            return web.json_response([p.name for p in files])

    # -- uploads --------------------------------------------------------------------------------
    async def _upload(self, request: web.Request, mask: bool = False) -> web.Response:
        if request.content_length is not None and request.content_length > self.max_upload + (1 << 16):
            return _bad(f"upload too large: {request.content_length} bytes, the limit is {self.max_upload}", 413)
        if not request.content_type.startswith("multipart/"):
            raise BadRequest("send the file as multipart/form-data with an 'image' field")
        fields, staged, name = {}, None, None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.name == "image" and part.filename is not None and staged is None:
                    name = part.filename
                    staged = staging_file(self.dirs["temp"] / ".uploads", Path(name).suffix.lower())
                    size = 0
                    with open(staged, "wb") as f:
                        while chunk := await part.read_chunk(1 << 16):
                            size += len(chunk)
                            if size > self.max_upload:
                                return _bad(f"upload too large: the limit is {self.max_upload} bytes", 413)
                            f.write(chunk)
                else:
                    data = await part.read()
                    if len(data) > 1 << 16:
                        raise BadRequest(f"form field {part.name!r} is too long")
                    fields[part.name] = data.decode("utf-8", "replace")
            if staged is None:
                raise BadRequest("no file in the 'image' field")
            try:
                filename = clean_filename(name)
                kind = fields.get("type") or "input"
                if kind not in self.dirs:
                    raise BadRequest(f"'type' must be one of {', '.join(self.dirs)}")
                subfolder = fields.get("subfolder", "")
                safe_path(self.dirs[kind], subfolder)
                if mask:
                    self._apply_mask(staged, fields.get("original_ref"))
                else:
                    media_kind(staged)
            except UnsafePath as e:
                return web.Response(status=400, text=f"refused: {e}")
            except ValueError as e:
                raise BadRequest(f"{name}: {e}") from None
            overwrite = fields.get("overwrite", "").lower() in ("true", "1")
            final = place_upload(staged, self.dirs[kind], subfolder, filename, overwrite)
            staged = None
            return web.json_response({"name": final, "subfolder": subfolder, "type": kind})
        finally:
            if staged is not None:
                staged.unlink(missing_ok=True)

    def _apply_mask(self, staged: Path, original_ref: str | None):
        """ComfyUI's mask upload: the original image's colours with the uploaded mask's alpha."""
        from PIL import Image
        try:
            ref = json.loads(original_ref or "")
            assert isinstance(ref, dict) and ref.get("filename")
        except (ValueError, AssertionError):
            raise ValueError("'original_ref' must be JSON {filename, subfolder, type}") from None
        filename, annotated = split_annotation(str(ref["filename"]))
        kind = annotated or ref.get("type") or "output"
        if kind not in self.dirs:
            raise ValueError(f"original_ref type must be one of {', '.join(self.dirs)}")
        original = safe_path(self.dirs[kind], str(ref.get("subfolder") or ""), clean_filename(filename))
        if not original.is_file():
            raise ValueError("the original image does not exist")
        media_kind(staged)
        with Image.open(original) as img, Image.open(staged) as m:
            out = img.convert("RGBA")
            out.putalpha(m.convert("RGBA").getchannel("A").resize(out.size))
            buf = io.BytesIO()
            out.save(buf, format="PNG", compress_level=4)
        staged.write_bytes(buf.getvalue())


def _file_response(path: Path, q) -> web.StreamResponse:
    headers = {"Content-Disposition": f'filename="{path.name}"', "X-Content-Type-Options": "nosniff"}
    is_image = path.suffix.lower() in IMAGE_EXTENSIONS
    if is_image and (q.get("preview") or q.get("channel") in ("rgb", "a")):
        from PIL import Image
        with Image.open(path) as img:
            if q.get("preview"):
                fmt, *rest = q["preview"].split(";")
                fmt = fmt if fmt in ("webp", "jpeg") else "webp"
                quality = int(rest[-1]) if rest and rest[-1].isdigit() else 90
                img = img.convert("RGB") if fmt == "jpeg" or q.get("channel") == "rgb" else img
            elif q["channel"] == "rgb":
                fmt, quality, img = "png", None, img.convert("RGB")
            else:
                alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
                fmt, quality, img = "png", None, Image.new("RGBA", img.size)
                img.putalpha(alpha)
            buf = io.BytesIO()
            img.save(buf, format=fmt, **({"quality": quality} if quality else {}))
        return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}", headers=headers)
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if ctype in _FORCE_DOWNLOAD:
        ctype = "application/octet-stream"
    return web.FileResponse(path, headers={**headers, "Content-Type": ctype})
