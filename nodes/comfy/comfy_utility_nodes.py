"""ComfyUI's utility nodes that the Wan2.2 templates use inside their subgraphs: the Primitive*
constants, ComfySwitchNode (evaluates only the chosen branch) and ComfyMathExpression."""
from __future__ import annotations

import math
import string
import sys

from graphrt import Input, Node, Output, register_node

from .math_expression import evaluate


def _primitive(class_name: str, kind: str, display: str, **opts):
    """A node with one `value` widget of `kind`, returning it (comfy_extras/nodes_primitive.py)."""
    def execute(self, ctx, value):
        return (value,)
    return register_node(type(class_name, (Node,), {
        "CLASS_NAME": class_name, "DISPLAY_NAME": display, "CATEGORY": "utils/primitive",
        "DESCRIPTION": f"A constant {kind}.", "INPUTS": [Input("value", kind, **opts)],
        "OUTPUTS": [Output(kind, kind)], "execute": execute, "__module__": __name__}))


# PrimitiveInt's widget is followed by a control_after_generate value in UI files ("fixed", ...), as ComfyUI
# declares it.
PrimitiveInt = _primitive("PrimitiveInt", "INT", "Int", default=0, min=-sys.maxsize, max=sys.maxsize,
                          control_after_generate=True)
PrimitiveFloat = _primitive("PrimitiveFloat", "FLOAT", "Float", default=0.0, min=-sys.maxsize, max=sys.maxsize)
PrimitiveBoolean = _primitive("PrimitiveBoolean", "BOOLEAN", "Boolean", default=False)
PrimitiveString = _primitive("PrimitiveString", "STRING", "String", default="")
PrimitiveStringMultiline = _primitive("PrimitiveStringMultiline", "STRING", "String (Multiline)", default="",
                                      multiline=True)


@register_node
class ComfySwitchNode(Node):
    DISPLAY_NAME = "Switch"
    CATEGORY = "logic"
    DESCRIPTION = "Routes one of two inputs to the output based on a boolean switch value; only that branch runs."
    INPUTS = [Input("switch", "BOOLEAN"),
              Input("on_false", "*", lazy=True, optional=True),
              Input("on_true", "*", lazy=True, optional=True)]
    OUTPUTS = [Output("output", "*")]

    def check_lazy(self, ctx, switch, on_false=None, on_true=None):
        return ["on_true"] if switch else ["on_false"]

    def execute(self, ctx, switch, on_false=None, on_true=None):
        chosen = on_true if switch else on_false
        if chosen is None:
            raise ValueError(f"switch is {bool(switch)} but its '{'on_true' if switch else 'on_false'}' input is "
                             "not connected")
        return (chosen,)


VALUE_NAMES = list(string.ascii_lowercase)


@register_node
class ComfyMathExpression(Node):
    DISPLAY_NAME = "Math Expression"
    CATEGORY = "logic"
    DESCRIPTION = ("Evaluates a formula of the connected values a, b, c, ... (and `values`, all of them) with "
                   "+ - * / // % **, comparisons and sum min max abs round pow sqrt ceil floor log log2 log10 sin "
                   "cos tan int float; gives the result as FLOAT and INT (truncated).")
    INPUTS = [Input("expression", "STRING", default="a + b", multiline=True)] + \
        [Input(f"values.{n}", "FLOAT,INT", optional=True) for n in VALUE_NAMES]
    OUTPUTS = [Output("FLOAT", "FLOAT"), Output("INT", "INT")]

    @classmethod
    def validate_inputs(cls, expression="a + b", **_):
        if not str(expression).strip():
            return "expression cannot be empty"
        return None

    def execute(self, ctx, expression, **values):
        names = {n: values[f"values.{n}"] for n in VALUE_NAMES if values.get(f"values.{n}") is not None}
        names["values"] = list(names.values())
        result = evaluate(expression, names)
        if isinstance(result, bool) or not isinstance(result, (int, float)):
            raise ValueError(f"Math Expression '{expression}' must evaluate to a number, got "
                             f"{type(result).__name__}: {result!r}")
        if not math.isfinite(result):
            raise ValueError(f"Math Expression '{expression}' produced a non-finite result: {result}")
        return float(result), int(result)
