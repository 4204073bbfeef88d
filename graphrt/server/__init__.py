"""A server speaking ComfyUI's HTTP and WebSocket API over graphrt's engine, generic over
whatever node packs are registered: `python -m graphrt serve`.

Modules: app (routes), jobs (the sqlite queue and history), worker (the executor thread),
hub (WebSocket messages), object_info (node schemas in ComfyUI's format), prompts
(ComfyUI-style prompt validation), outputs (UI info -> file references), files (safe paths,
uploads), models (the models folder), userdata (settings and saved workflows),
frontend (the web page), serve (start and stop)."""
from .app import Server, ServerConfig
from .serve import serve

__all__ = ["Server", "ServerConfig", "serve"]
