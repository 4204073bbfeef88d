"""graphrt's Wan node pack.

`nodes.wan` is the model code (no graph engine needed); `nodes.pack` registers
the node types, and is what the `graphrt.nodes` entry point names.
"""
