"""`python -m graphrt serve`: starts the queue, the worker and the HTTP server, and
stops them cleanly on Ctrl-C / SIGTERM (a running job goes back to the queue)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

from aiohttp import web

from .app import Server, ServerConfig
from .jobs import JobStore

log = logging.getLogger("graphrt.server")


def serve(cfg: ServerConfig, on_listening=None) -> int:
    from ..executor import Executor
    if cfg.memory_budget:   # the budget node packs load models under (see cli.memory_options)
        from ..cache import OutputCache
        os.environ["GRAPHRT_MEMORY_BUDGET"] = str(OutputCache.parse(f"budget:{cfg.memory_budget}")[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s graphrt: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    Path(cfg.user_dir).mkdir(parents=True, exist_ok=True)
    store = JobStore(cfg.queue_db or str(Path(cfg.user_dir) / "queue.sqlite3"))
    recovered = store.recover()
    if recovered:
        log.info("%d job(s) that were running when the server stopped are queued again", recovered)
    executor = Executor(cache=cfg.cache, output_dir=cfg.output_dir, cache_dir=cfg.cache_dir,
                        cache_dir_bytes=cfg.cache_dir_bytes)
    server = Server(cfg, executor, store)
    try:
        asyncio.run(_main(server, cfg, on_listening))
    finally:
        store.close()
    return 0


async def _main(server: Server, cfg: ServerConfig, on_listening):
    runner = web.AppRunner(server.app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.listen, cfg.port)
    await site.start()
    await server.hub.start()
    server.worker.start()
    host, port = site._server.sockets[0].getsockname()[:2]
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    print(f"graphrt server listening on {url}", flush=True)
    if server.web_root is None:
        log.info("the ComfyUI web page is not installed (pip install -e '.[ui]'); the API is served")
    if on_listening:
        on_listening(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: the running job, if any, stops at its next step and stays queued")
    stopped = await loop.run_in_executor(None, server.worker.stop, 30.0)
    if not stopped:
        log.warning("the running node did not stop in 30 s; its job runs again on the next start")
    await server.hub.stop()
    await runner.cleanup()
