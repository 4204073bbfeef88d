"""A safe evaluator for ComfyMathExpression's formulas (ComfyUI evaluates them with simpleeval).

Numbers, the input names (a, b, ... and `values`, the list of all of them), arithmetic
(+ - * / // % **), comparisons, `and` / `or` / `not`, `x if c else y`, and ComfyUI's functions:
sum min max abs round pow sqrt ceil floor log log2 log10 sin cos tan int float. Anything else —
attributes, subscripts, other names, keyword arguments — is refused with the reason.
"""
from __future__ import annotations

import ast
import math
import operator

MAX_EXPONENT = 4000       # ComfyUI caps pow()'s exponent; simpleeval caps ** likewise


def _sum(*args):
    return sum(args[0]) if len(args) == 1 and hasattr(args[0], "__iter__") else sum(args)


def _pow(base, exp):
    if abs(exp) > MAX_EXPONENT:
        raise ValueError(f"exponent {exp} exceeds the maximum allowed ({MAX_EXPONENT})")
    return pow(base, exp)


FUNCTIONS = {"sum": _sum, "min": min, "max": max, "abs": abs, "round": round, "pow": _pow, "sqrt": math.sqrt,
             "ceil": math.ceil, "floor": math.floor, "log": math.log, "log2": math.log2, "log10": math.log10,
             "sin": math.sin, "cos": math.cos, "tan": math.tan, "int": int, "float": float}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge}


def evaluate(expression: str, names: dict):
    """The value of `expression` with `names` bound; ValueError naming what is not allowed."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse the expression {expression!r}: {e.msg}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in names:
                return names[node.id]
            raise ValueError(f"unknown name {node.id!r} (connected inputs: {', '.join(sorted(names)) or 'none'})")
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            return _BIN[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.BoolOp):
            vals = [ev(v) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.Compare) and all(type(op) in _CMP for op in node.ops):
            left = ev(node.left)
            for op, right in zip(node.ops, node.comparators):
                r = ev(right)
                if not _CMP[type(op)](left, r):
                    return False
                left = r
            return True
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            if node.func.id not in FUNCTIONS:
                raise ValueError(f"unknown function {node.func.id!r}; available: {', '.join(sorted(FUNCTIONS))}")
            return FUNCTIONS[node.func.id](*[ev(a) for a in node.args])
        if isinstance(node, (ast.List, ast.Tuple)):
            return [ev(e) for e in node.elts]
        raise ValueError(f"{type(node).__name__} is not allowed in a math expression")
    return ev(tree)
