"""Node schema: typed inputs and outputs, the Node base class, the run context."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

VALUE_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")
ANY = "*"


@dataclass(frozen=True)
class Input:
    """One input of a node type.

    `type` is a value type (INT, FLOAT, STRING, BOOLEAN), a list of strings (an
    enum), or a socket type name such as MODEL or LATENT (fed only by links);
    "*" accepts anything and "A,B" either type.
    """
    name: str
    type: str | list
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    tooltip: str = ""
    optional: bool = False
    lazy: bool = False
    multiline: bool = False
    # the editor shows a "control after generate" widget (randomize / fixed / ...) after this one, and
    # UI-format files store its value right after this input's
    control_after_generate: bool = False

    def __post_init__(self):
        if isinstance(self.type, (list, tuple)):
            object.__setattr__(self, "type", list(self.type))

    @property
    def is_enum(self) -> bool:
        return isinstance(self.type, list)

    @property
    def is_value(self) -> bool:
        return self.is_enum or self.type in VALUE_TYPES

    @property
    def type_name(self) -> str:
        return "COMBO" if self.is_enum else self.type

    def describe(self) -> str:
        """'INT in [1, 100]', 'one of ["a", "b"]', 'a MODEL link'."""
        if self.is_enum:
            opts = self.type if len(self.type) <= 12 else self.type[:12] + ["..."]
            return "one of " + ", ".join(map(repr, opts))
        if not self.is_value:
            return f"a {self.type} link"
        if self.min is not None or self.max is not None:
            return f"{self.type} in [{'-inf' if self.min is None else _num(self.min)}, " \
                   f"{'inf' if self.max is None else _num(self.max)}]"
        return self.type

    def options(self) -> dict:
        opts = {k: v for k, v in (("default", self.default), ("min", self.min), ("max", self.max),
                                  ("step", self.step), ("tooltip", self.tooltip or None)) if v is not None}
        if self.lazy:
            opts["lazy"] = True
        if self.multiline:
            opts["multiline"] = True
        if self.control_after_generate:
            opts["control_after_generate"] = True
        if self.is_enum:
            opts["options"] = list(self.type)
        return opts


def _num(v):
    return int(v) if float(v).is_integer() and abs(v) < 2**63 else v


@dataclass(frozen=True)
class Output:
    name: str
    type: str
    tooltip: str = ""


class Node:
    """Base class of node types; see README 'Writing a node'.

    Subclasses set CATEGORY, DESCRIPTION, INPUTS, OUTPUTS (and optionally
    CLASS_NAME, DISPLAY_NAME, OUTPUT_NODE, ALWAYS_RUN) and implement
    `execute(self, ctx, **inputs)` returning one value per output.
    """
    CLASS_NAME: str | None = None
    DISPLAY_NAME: str | None = None
    CATEGORY: str = ""
    DESCRIPTION: str = ""
    INPUTS: list = []
    OUTPUTS: list = []
    OUTPUT_NODE: bool = False
    ALWAYS_RUN: bool = False

    def execute(self, ctx: "NodeContext", **inputs):
        raise NotImplementedError(f"{type(self).__name__}.execute")

    @classmethod
    def class_name(cls) -> str:
        return cls.__dict__.get("CLASS_NAME") or cls.__name__

    @classmethod
    def input_map(cls) -> dict[str, Input]:
        cached = cls.__dict__.get("_input_map")
        if cached is None:
            cached = {i.name: i for i in cls.INPUTS}
            cls._input_map = cached
        return cached

    @classmethod
    def has_lazy(cls) -> bool:
        return any(i.lazy for i in cls.INPUTS)


class InterruptedRun(Exception):
    """Raised inside a node when the user asked the run to stop."""


@dataclass
class NodeContext:
    node_id: str
    class_name: str
    output_root: Path
    _progress: Callable[[str, float, float], None]
    _interrupted: Callable[[], bool]
    ui_info: dict = field(default_factory=dict)
    logs: list = field(default_factory=list)
    metrics_info: dict = field(default_factory=dict)
    _preview: Callable[[str, Any], None] | None = None

    @property
    def output_dir(self) -> Path:
        self.output_root.mkdir(parents=True, exist_ok=True)
        return self.output_root

    def check_interrupt(self) -> None:
        if self._interrupted():
            raise InterruptedRun()

    def progress(self, value, total=None) -> None:
        """Report progress (value of total) and stop here if an interrupt was asked for."""
        self._progress(self.node_id, value, total)
        self.check_interrupt()

    @property
    def wants_preview(self) -> bool:
        """True when a subscriber asked for previews (the server, for its web page): build one only then."""
        return self._preview is not None

    def preview(self, image) -> None:
        """Show `image` as this node's live preview: frames [H, W, 3] or [N, H, W, 3]
        (the first is shown) in 0..1 or uint8, or a PIL image. Free when nobody listens."""
        if self._preview is not None:
            self._preview(self.node_id, image)

    def ui(self, **info) -> None:
        self.ui_info.update(info)

    def metrics(self, **values) -> None:
        """Numbers for the run report (`NodeReport.metrics`, `--report`): what the node did, e.g. how
        many model calls a cache skipped. Kept with the output, so a cached hit reports them too."""
        self.metrics_info.update(values)

    def log(self, message: str) -> None:
        self.logs.append(str(message))
