"""Command line: `python -m graphrt run|validate|nodes|params|serve ...`.

Exit codes: 0 success, 1 a node failed, 2 invalid workflow, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from .errors import Interrupted, NodeExecutionError, WorkflowError
from .registry import all_schemas, import_module_nodes, load_node_packs
from .workflow import Workflow

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def parse_value(spec: dict, text: str):
    """A `--set` value parsed by the parameter's declared type."""
    t = spec.get("type")
    if t == "INT":
        return int(text)
    if t == "FLOAT":
        return float(text)
    if t == "BOOLEAN":
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    return text


def _params(wf: Workflow, pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise WorkflowError([_err(f"--set expects name=value, got {pair!r}")], wf.source)
        name, text = pair.split("=", 1)
        spec = wf.params.get(name)
        if spec is None:
            out[name] = text  # reported as unknown by validation, with suggestions
            continue
        try:
            out[name] = parse_value(spec, text)
        except ValueError as e:
            raise WorkflowError([_err(f"parameter '{name}': {e}")], wf.source) from None
    return out


def _err(message):
    from .errors import ValidationError
    return ValidationError(None, None, None, "", "", message)


def _print_invalid(e: WorkflowError) -> int:
    print(f"invalid workflow{' ' + e.source if e.source else ''}: {len(e.errors)} error(s)", file=sys.stderr)
    for err in e.errors:
        line = str(err)
        if err.expected and err.received and err.expected not in line:
            line += f" (expected {err.expected}, received {err.received})"
        print(f"  - {line}", file=sys.stderr)
    return EXIT_INVALID


class _Progress:
    """Renders run events: a line per node, a tqdm bar for nodes that report progress."""

    def __init__(self, stream=sys.stderr):
        self.stream, self.bar = stream, None

    def __call__(self, ev):
        from tqdm import tqdm
        if ev.type == "node_started":
            print(f"[{ev.node_id}] {ev.class_type} ...", file=self.stream, flush=True)
        elif ev.type == "progress":
            if self.bar is None:
                self.bar = tqdm(total=ev.max, desc=f"[{ev.node_id}] {ev.class_type}", file=self.stream, leave=False)
            self.bar.n = ev.value
            self.bar.refresh()
        elif ev.type in ("node_finished", "node_failed", "interrupted"):
            if self.bar is not None:
                self.bar.close()
                self.bar = None
            if ev.type == "node_finished":
                how = "cached" if ev.cached else f"{ev.seconds:.2f} s"
                print(f"[{ev.node_id}] {ev.class_type} done ({how})", file=self.stream, flush=True)


MEMORY_BUDGET_ENV = "GRAPHRT_MEMORY_BUDGET"


def memory_options(a) -> str:
    """Apply --memory-budget and return the output cache policy.

    Precedence: an explicit --cache wins; else --memory-budget SIZE makes it `budget:SIZE`; else
    `last-run`. --memory-budget also sets $GRAPHRT_MEMORY_BUDGET (bytes), the budget node packs
    load models under (the Wan pack streams a transformer that does not fit it and releases the
    text encoder, CLIP and the other Wan2.2 expert when a model needs the room); without it
    they use that variable if set, else the RAM available minus a margin."""
    from .cache import OutputCache
    budget = getattr(a, "memory_budget", None)
    if budget:
        try:
            _, limit = OutputCache.parse(f"budget:{budget}")
        except ValueError:
            raise SystemExit(f"--memory-budget: not a size: {budget!r} (use e.g. 20GB or 512MiB)") from None
        os.environ[MEMORY_BUDGET_ENV] = str(limit)
    if a.cache is not None:
        return a.cache
    return f"budget:{budget}" if budget else "last-run"


def cmd_run(a) -> int:
    from .executor import Executor
    wf = Workflow.load(a.workflow)
    export_folders(a)
    ex = Executor(cache=memory_options(a), output_dir=a.output_dir, **disk_cache_options(a))
    ex.subscribe(_Progress())
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum, frame):
        print("\ninterrupt requested: stopping at the next step boundary (Ctrl-C again to abort)", file=sys.stderr)
        ex.interrupt()
        signal.signal(signal.SIGINT, previous)
    signal.signal(signal.SIGINT, on_sigint)
    result, code = None, EXIT_OK
    try:
        result = ex.run(wf, params=_params(wf, a.set), targets=a.target or None)
    except NodeExecutionError as e:
        result, code = e.result, EXIT_FAILED
        print(f"node {e.node_id} ({e.class_type}) failed: {type(e.original).__name__}: {e.original}", file=sys.stderr)
        for k, v in e.inputs_summary.items():
            print(f"    {k} = {v}", file=sys.stderr)
    except Interrupted as e:
        result, code = e.result, EXIT_INTERRUPTED
        print(f"interrupted{' at node ' + e.node_id if e.node_id else ''}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result is not None:
        print(f"run: {result.report.summary()} in {result.seconds:.2f} s", file=sys.stderr)
        for nid, ui in result.ui.items() if code == EXIT_OK else []:
            for f in ui.get("files", []):
                print(f"wrote {f}")
        if a.report:
            with open(a.report, "w") as f:
                f.write(result.report.to_json())
    return code


def cmd_validate(a) -> int:
    from .validate import validate
    export_folders(a)
    wf = Workflow.load(a.workflow)
    errors = validate(wf, _params(wf, a.set))
    if errors:
        raise WorkflowError(errors, wf.source)
    print(f"{a.workflow}: valid ({len(wf.nodes)} nodes, {len(wf.params)} parameters)")
    return EXIT_OK


def cmd_nodes(a) -> int:
    schemas = all_schemas()
    if a.json:
        print(json.dumps(schemas, indent=2, default=str))
        return EXIT_OK
    by_cat: dict[str, list] = {}
    for s in schemas.values():
        by_cat.setdefault(s["category"] or "(none)", []).append(s)
    for cat in sorted(by_cat):
        print(f"{cat}:")
        for s in by_cat[cat]:
            ins = ", ".join(f"{n}: {v[0]}" for n, v in {**s["input"]["required"], **s["input"]["optional"]}.items())
            outs = ", ".join(f"{n}: {t}" for n, t in zip(s["output_name"], s["output"]))
            print(f"  {s['name']}({ins}) -> ({outs})")
            if s["description"]:
                print(f"      {s['description']}")
    return EXIT_OK


def cmd_params(a) -> int:
    wf = Workflow.load(a.workflow)
    if not wf.params:
        print(f"{a.workflow} declares no parameters")
        return EXIT_OK
    for name, spec in wf.params.items():
        t = spec["type"] if isinstance(spec["type"], str) else "one of " + "|".join(spec["type"])
        targets = ", ".join(f"{n}.{i}" for n, i in spec.get("targets", []))
        print(f"{name} ({t}) = {json.dumps(spec.get('default'), ensure_ascii=False)}   -> {targets}")
        if spec.get("description"):
            print(f"    {spec['description']}")
    return EXIT_OK


def cmd_serve(a) -> int:
    from .server import ServerConfig, serve
    disk = disk_cache_options(a)
    export_folders(a)
    return serve(ServerConfig(listen=a.listen, port=a.port, models_dir=a.models_dir, output_dir=a.output_dir,
                              input_dir=a.input_dir, temp_dir=a.temp_dir, user_dir=a.user_dir,
                              queue_db=a.queue_db, cache=memory_options(a), max_upload_mb=a.max_upload_size,
                              front_end_root=a.front_end_root, cache_dir=disk["cache_dir"],
                              cache_dir_bytes=disk["cache_dir_bytes"], memory_budget=a.memory_budget))


def export_folders(a) -> None:
    """Tell node packs where the models and input folders are (they read these variables, so a node
    resolves a file name the same way under `run`, `serve` and a script)."""
    for option, var in (("models_dir", "GRAPHRT_MODELS_DIR"), ("input_dir", "GRAPHRT_INPUT_DIR")):
        value = getattr(a, option, None)
        if value:
            os.environ[var] = str(Path(value).expanduser().resolve())
    extra = getattr(a, "extra_model_paths", None) or []
    if extra:
        os.environ["GRAPHRT_EXTRA_MODEL_PATHS"] = os.pathsep.join(str(Path(p).expanduser().resolve()) for p in extra)


def default_cache_dir() -> Path:
    return Path(os.environ.get("GRAPHRT_HOME", Path.home() / ".cache" / "graphrt")) / "outputs"


def disk_cache_options(a) -> dict:
    """Executor arguments of --cache-dir / --cache-dir-size ('none' turns the disk tier off)."""
    from .cache import OutputCache
    if str(a.cache_dir).lower() == "none":
        return {"cache_dir": None, "cache_dir_bytes": None}
    kind, limit = OutputCache.parse(f"budget:{a.cache_dir_size}")
    return {"cache_dir": a.cache_dir or default_cache_dir(), "cache_dir_bytes": limit}


def _folder_arguments(p, defaults: bool):
    p.add_argument("--models-dir", default="models" if defaults else None,
                   help="ComfyUI-style models folder (diffusion_models, text_encoders, vae, clip_vision, loras, ...)")
    p.add_argument("--input-dir", default="input" if defaults else None, help="where input images and videos are")
    p.add_argument("--extra-model-paths", action="append", default=[], metavar="YAML",
                   help="a ComfyUI extra_model_paths.yaml whose folders are searched too (repeatable)")


def _disk_cache_arguments(p):
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="disk tier of the output cache: text encodings, latents and whatever the memory budget "
                        "evicts survive restarts (default $GRAPHRT_HOME/outputs, ~/.cache/graphrt/outputs; "
                        "'none' turns it off)")
    p.add_argument("--cache-dir-size", default="20GB", help="the disk tier's size (oldest-used entries go first)")


def _memory_arguments(p):
    p.add_argument("--cache", default=None, help="last-run (default) | lru:N | budget:8GB | none; wins over the "
                                                 "policy --memory-budget implies")
    p.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="host memory for this process, e.g. 20GB: models are loaded under it (a transformer "
                        "that does not fit is streamed block by block with offload=auto; the text encoder, CLIP "
                        "and the other Wan2.2 expert are released when a model needs the room) and, unless "
                        "--cache is given, the output cache is budget:SIZE. Default: the RAM available minus "
                        "a margin ($GRAPHRT_MEMORY_BUDGET if set) for models, last-run for the cache")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphrt", description="Run node-graph workflows (ComfyUI API format).")
    p.add_argument("--nodes", action="append", default=[], metavar="MODULE",
                   help="import an extra node module (repeatable)")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a workflow")
    r.add_argument("workflow")
    r.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="set a template parameter")
    r.add_argument("--report", help="write the per-node run report (JSON) here")
    r.add_argument("--output-dir", default="output")
    _memory_arguments(r)
    r.add_argument("--target", action="append", default=[], help="run only what this node needs (repeatable)")
    _disk_cache_arguments(r)
    _folder_arguments(r, defaults=False)
    r.set_defaults(fn=cmd_run)
    v = sub.add_parser("validate", help="check a workflow without running it")
    v.add_argument("workflow")
    v.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    _folder_arguments(v, defaults=False)
    v.set_defaults(fn=cmd_validate)
    n = sub.add_parser("nodes", help="list node types and their schemas")
    n.add_argument("--json", action="store_true")
    n.set_defaults(fn=cmd_nodes)
    pp = sub.add_parser("params", help="list a template's parameters")
    pp.add_argument("workflow")
    pp.set_defaults(fn=cmd_params)
    sv = sub.add_parser("serve", help="serve ComfyUI's HTTP/WebSocket API and web page")
    sv.add_argument("--listen", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8188, help="0 picks a free port")
    _folder_arguments(sv, defaults=True)
    sv.add_argument("--output-dir", default="output")
    sv.add_argument("--temp-dir", default="temp")
    sv.add_argument("--user-dir", default="user", help="settings, saved workflows and the queue database")
    sv.add_argument("--queue-db", default=None, help="the queue's sqlite file (default USER_DIR/queue.sqlite3)")
    _memory_arguments(sv)
    sv.add_argument("--max-upload-size", type=float, default=100.0, metavar="MB")
    _disk_cache_arguments(sv)
    sv.add_argument("--front-end-root", default=None, help="serve this web page folder instead of the package's")
    sv.set_defaults(fn=cmd_serve)
    for sp in (r, v, n, pp, sv):
        sp.add_argument("--nodes", action="append", default=[], dest="sub_nodes", metavar="MODULE",
                        help="import an extra node module (repeatable)")
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    load_node_packs()
    for module in a.nodes + a.sub_nodes:
        import_module_nodes(module)
    try:
        return a.fn(a)
    except WorkflowError as e:
        return _print_invalid(e)
