"""Test-only node types: arithmetic, strings, a run counter, failures, progress, a lazy switch."""
from __future__ import annotations

import threading
from collections import Counter

from graphrt import Input, Node, Output, register_node

RUNS: Counter = Counter()          # class name / label -> executions
FAIL = {"enabled": True}           # flip to make Flaky succeed


def reset():
    RUNS.clear()
    FAIL["enabled"] = True


@register_node
class Const(Node):
    CATEGORY = "test"
    DESCRIPTION = "An integer constant."
    INPUTS = [Input("value", "INT", default=0, min=-10**9, max=10**9)]
    OUTPUTS = [Output("value", "INT")]

    def execute(self, ctx, value):
        RUNS["Const"] += 1
        return (value,)


@register_node
class Add(Node):
    CATEGORY = "test"
    DESCRIPTION = "a + b."
    INPUTS = [Input("a", "INT", default=0, min=-10**9, max=10**9), Input("b", "INT", default=0, min=-10**9, max=10**9),
              Input("label", "STRING", optional=True, default="")]
    OUTPUTS = [Output("sum", "INT")]

    def execute(self, ctx, a, b, label=""):
        RUNS["Add"] += 1
        RUNS[f"Add:{label}"] += 1
        return a + b


@register_node
class Scale(Node):
    CATEGORY = "test"
    DESCRIPTION = "x * factor, as a float."
    INPUTS = [Input("x", "INT"), Input("factor", "FLOAT", default=1.0, min=0.0, max=10.0)]
    OUTPUTS = [Output("y", "FLOAT")]

    def execute(self, ctx, x, factor):
        RUNS["Scale"] += 1
        return (x * factor,)


@register_node
class Concat(Node):
    CATEGORY = "test"
    DESCRIPTION = "Joins two strings."
    INPUTS = [Input("a", "STRING", default=""), Input("b", "STRING", default=""),
              Input("sep", [" ", "-", "_"], default=" ")]
    OUTPUTS = [Output("text", "STRING")]

    def execute(self, ctx, a, b, sep):
        RUNS["Concat"] += 1
        return (f"{a}{sep}{b}",)


@register_node
class Blob(Node):
    CATEGORY = "test"
    DESCRIPTION = "A value of a given size in bytes (for cache budgets)."
    INPUTS = [Input("nbytes", "INT", default=100, min=0, max=10**12), Input("tag", "INT", default=0)]
    OUTPUTS = [Output("blob", "BLOB")]

    class Value:
        def __init__(self, n, tag):
            self.nbytes, self.tag = n, tag

    def execute(self, ctx, nbytes, tag):
        RUNS["Blob"] += 1
        return (Blob.Value(nbytes, tag),)


@register_node
class BlobSize(Node):
    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = [Input("blob", "BLOB")]
    OUTPUTS = [Output("n", "INT")]

    def execute(self, ctx, blob):
        return (blob.nbytes,)


@register_node
class Flaky(Node):
    CATEGORY = "test"
    DESCRIPTION = "Fails while FAIL['enabled'] is set."
    INPUTS = [Input("x", "INT")]
    OUTPUTS = [Output("x", "INT")]

    def execute(self, ctx, x):
        RUNS["Flaky"] += 1
        if FAIL["enabled"]:
            raise RuntimeError("flaky node failed on purpose")
        return (x,)


@register_node
class Slow(Node):
    CATEGORY = "test"
    DESCRIPTION = "Reports `steps` progress events."
    INPUTS = [Input("x", "INT"), Input("steps", "INT", default=5, min=1, max=1000)]
    OUTPUTS = [Output("x", "INT")]

    def execute(self, ctx, x, steps):
        RUNS["Slow"] += 1
        for i in range(steps):
            ctx.progress(i + 1, steps)
        RUNS["SlowCompleted"] += 1
        return (x,)


@register_node
class Switch(Node):
    CATEGORY = "test"
    DESCRIPTION = "Evaluates only the chosen branch."
    INPUTS = [Input("which", "BOOLEAN", default=True), Input("on_true", "*", lazy=True),
              Input("on_false", "*", lazy=True)]
    OUTPUTS = [Output("value", "*")]

    def check_lazy(self, ctx, which, on_true=None, on_false=None):
        return ["on_true"] if which else ["on_false"]

    def execute(self, ctx, which, on_true=None, on_false=None):
        RUNS["Switch"] += 1
        return (on_true if which else on_false,)


@register_node
class Output_(Node):
    CLASS_NAME = "Show"
    CATEGORY = "test"
    DESCRIPTION = "An output node: records what it got."
    OUTPUT_NODE = True
    INPUTS = [Input("value", "*")]
    OUTPUTS = [Output("value", "*")]

    def execute(self, ctx, value):
        RUNS["Show"] += 1
        ctx.ui(shown=repr(value))
        return (value,)


@register_node
class EvenOnly(Node):
    CATEGORY = "test"
    DESCRIPTION = "Has a validator: x must be even."
    INPUTS = [Input("x", "INT", default=0)]
    OUTPUTS = [Output("x", "INT")]

    @classmethod
    def validate_inputs(cls, x=0, **_):
        return None if x % 2 == 0 else f"x {x} must be even; nearest: {x - 1} or {x + 1}"

    def execute(self, ctx, x):
        return (x,)


@register_node
class FileLen(Node):
    CATEGORY = "test"
    DESCRIPTION = "Length of a file; its content hash is the fingerprint."
    INPUTS = [Input("path", "STRING", default="")]
    OUTPUTS = [Output("n", "INT")]

    @classmethod
    def fingerprint(cls, path="", **_):
        with open(path, "rb") as f:
            return hash(f.read())

    def execute(self, ctx, path):
        RUNS["FileLen"] += 1
        with open(path, "rb") as f:
            return (len(f.read()),)


@register_node
class Clock(Node):
    CATEGORY = "test"
    ALWAYS_RUN = True
    INPUTS = []
    OUTPUTS = [Output("tick", "INT")]

    def execute(self, ctx):
        RUNS["Clock"] += 1
        return (RUNS["Clock"],)
