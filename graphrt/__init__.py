"""graphrt: a typed node-graph runtime (ComfyUI API-format workflows, cached execution).

    from graphrt import Workflow, Executor, GraphBuilder
"""
from .builder import GraphBuilder, NodeHandle
from .errors import Interrupted, NodeExecutionError, ValidationError, WorkflowError
from .events import Event, NodeReport, RunReport
from .executor import Executor, RunResult
from .registry import load_node_packs, node_schema, register_node
from .types import Input, Node, NodeContext, Output
from .validate import validate
from .workflow import Workflow

__all__ = ["Workflow", "Executor", "GraphBuilder", "NodeHandle", "RunResult", "RunReport", "NodeReport", "Event",
           "Node", "Input", "Output", "NodeContext", "register_node", "load_node_packs", "node_schema",
           "validate", "ValidationError", "WorkflowError", "NodeExecutionError", "Interrupted"]
