"""ComfyUI's web page (pip package comfyui-frontend-package, `pip install -e '.[ui]'`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

MISSING_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>graphrt</title></head>
<body style="font-family:sans-serif;max-width:46em;margin:3em auto">
<h1>graphrt server</h1>
<p>The ComfyUI web page is not installed. Install it with
<code>pip install -e '.[ui]'</code> (the <code>comfyui-frontend-package</code>) and restart the server.</p>
<p>The ComfyUI HTTP API works without it: <code>POST /prompt</code>, <code>GET /object_info</code>,
<code>GET /history</code>, <code>GET /view</code>, WebSocket <code>/ws?clientId=</code>, ...</p>
</body></html>"""


def find_frontend(override: str | None = None) -> Path | None:
    """The folder holding index.html: `override`, else the installed package's static/."""
    if override:
        p = Path(override)
        return p if (p / "index.html").is_file() else None
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "static"
        if (p / "index.html").is_file():
            return p
    return None


def frontend_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("comfyui-frontend-package")
    except Exception:
        return None


def extension_scripts(root: Path | None) -> list[str]:
    """The web page's own extension scripts, as ComfyUI's /extensions lists them."""
    if root is None or not (root / "extensions").is_dir():
        return []
    return sorted("/" + p.relative_to(root).as_posix() for p in (root / "extensions").rglob("*.js"))
