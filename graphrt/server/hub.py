"""WebSocket clients and the messages sent to them: JSON `{type, data}` frames and
binary preview frames, to one client (its clientId) or to all."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import struct

import numpy as np

log = logging.getLogger("graphrt.server")

PREVIEW_IMAGE = 1                     # ComfyUI's binary event types
PREVIEW_IMAGE_WITH_METADATA = 4
PREVIEW_MAX_SIZE = 512


def encode_preview(image, max_size: int = PREVIEW_MAX_SIZE) -> bytes:
    """JPEG bytes of a PIL image or of frames [H, W, C] / [N, H, W, C] (the first) in 0..1 or uint8."""
    from PIL import Image, ImageOps
    if not isinstance(image, Image.Image):
        arr = np.asarray(image.asnumpy() if hasattr(image, "asnumpy") else image)
        while arr.ndim > 3:
            arr = arr[0]
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        image = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    image = ImageOps.contain(image.convert("RGB"), (max_size, max_size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class Hub:
    def __init__(self, features: dict):
        self.sockets: dict[str, object] = {}
        self.flags: dict[str, dict] = {}
        self.features = features
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self.sent = 0

    async def start(self):
        self.loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._publish())

    async def stop(self):
        self._task.cancel()
        for ws in list(self.sockets.values()):
            await ws.close()

    # -- from any thread ---------------------------------------------------------------
    def send(self, event: str, data, sid: str | None = None) -> None:
        """Queue a JSON message for client `sid` (all clients if None); safe from any thread."""
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, (event, data, sid))

    def send_preview(self, jpeg: bytes, meta: dict, sid: str | None) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, (PREVIEW_IMAGE, (jpeg, meta), sid))

    # -- on the loop -------------------------------------------------------------------
    async def _publish(self):
        while True:
            event, data, sid = await self._queue.get()
            targets = list(self.sockets) if sid is None else ([sid] if sid in self.sockets else [])
            for target in targets:
                try:
                    await self._send_one(target, event, data)
                except Exception as e:  # a client that went away must not stop the others
                    log.debug("websocket send to %s failed: %s", target, e)

    async def _send_one(self, sid, event, data):
        ws = self.sockets.get(sid)
        if ws is None or ws.closed:
            return
        if event == PREVIEW_IMAGE:
            jpeg, meta = data
            if self.flags.get(sid, {}).get("supports_preview_metadata"):
                blob = json.dumps({**meta, "image_type": "image/jpeg"}).encode()
                await ws.send_bytes(struct.pack(">I", PREVIEW_IMAGE_WITH_METADATA) + struct.pack(">I", len(blob))
                                    + blob + jpeg)
            else:
                await ws.send_bytes(struct.pack(">II", PREVIEW_IMAGE, 1) + jpeg)
        else:
            await ws.send_str(json.dumps({"type": event, "data": data}, default=str))
        self.sent += 1

    def add(self, sid: str, ws):
        self.sockets[sid] = ws
        self.flags[sid] = {}

    def remove(self, sid: str, ws):
        if self.sockets.get(sid) is ws:
            self.sockets.pop(sid, None)
            self.flags.pop(sid, None)
