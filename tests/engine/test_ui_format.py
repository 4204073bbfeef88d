"""UI-format workflows (nodes + links with positional widgets_values) imported into the API format."""
from __future__ import annotations

import json

import pytest

from graphrt import Executor, Workflow
from graphrt.errors import WorkflowError
from graphrt.registry import load_node_packs
from graphrt.ui_format import ui_to_api


def _node(id, type, widgets=(), inputs=(), outputs=(), mode=0, title=None):
    n = {"id": id, "type": type, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": id, "mode": mode,
         "inputs": [{"name": name, "type": t, "link": link, **({"widget": {"name": name}} if w else {})}
                    for name, t, link, w in inputs],
         "outputs": [{"name": name, "type": t, "links": links, "slot_index": i}
                     for i, (name, t, links) in enumerate(outputs)],
         "properties": {"Node name for S&R": type}, "widgets_values": list(widgets)}
    if title:
        n["title"] = title
    return n


def t2v_ui(link_objects=False):
    """A tiny T2V graph as an editor saves it: a reroute on the model link, a note, a PrimitiveNode
    driving the seed, a muted SaveVideo, a bypassed decode-side node, seed's control widget value."""
    links = [
        [1, 1, 0, 10, 0, "MODEL"],            # loader.model -> reroute
        [2, 10, 0, 5, 0, "MODEL"],            # reroute -> denoise.model
        [3, 1, 1, 2, 0, "TEXT_ENCODER"], [4, 1, 1, 3, 0, "TEXT_ENCODER"],
        [5, 2, 0, 5, 1, "CONDITIONING"], [6, 4, 0, 5, 2, "LATENT"], [7, 3, 0, 5, 8, "CONDITIONING"],
        [8, 1, 2, 6, 0, "VAE"], [9, 5, 0, 11, 1, "LATENT"], [10, 11, 0, 6, 1, "LATENT"],
        [11, 6, 0, 7, 0, "IMAGE"], [12, 6, 0, 8, 0, "IMAGE"], [13, 12, 0, 5, 3, "INT"],
        [14, 1, 2, 11, 0, "VAE"],
    ]
    nodes = [
        _node(1, "WanPipelineLoader", ["tiny", "float32", "float32", "float32", "auto"],
              outputs=[("model", "MODEL", [1]), ("text_encoder", "TEXT_ENCODER", [3, 4]), ("vae", "VAE", [8, 14])]),
        _node(2, "WanTextEncode", ["a red fox"], [("text_encoder", "TEXT_ENCODER", 3, False)],
              [("conditioning", "CONDITIONING", [5])], title="Prompt"),
        _node(3, "WanTextEncode", [""], [("text_encoder", "TEXT_ENCODER", 4, False)],
              [("conditioning", "CONDITIONING", [7])]),
        _node(4, "WanEmptyLatentVideo", [32, 32, 5, 1], outputs=[("latent", "LATENT", [6])]),
        _node(5, "WanDenoise", [999, "randomize", 2, 5.0, "unipc", 3.0, 1.0, 0, 10000, True, False],
              [("model", "MODEL", 2, False), ("positive", "CONDITIONING", 5, False), ("latent", "LATENT", 6, False),
               ("seed", "INT", 13, True), ("negative", "CONDITIONING", 7, False)],
              [("latent", "LATENT", [9])]),
        _node(6, "WanVAEDecode", [False], [("vae", "VAE", 8, False), ("latent", "LATENT", 10, False)],
              [("images", "IMAGE", [11, 12])]),
        _node(7, "SaveTensor", ["ui", "npy"], [("tensor", "LATENT,IMAGE", 11, False)]),
        _node(8, "SaveVideo", ["muted", "mp4", 16.0, 19], [("images", "IMAGE", 12, False)], mode=2),
        _node(9, "Note", ["just a note"]),
        _node(10, "Reroute", [], [("", "*", 1, False)], [("", "MODEL", [2])]),
        # A bypassed VAE encode-decode stand-in: bypass passes its LATENT input through.
        _node(11, "WanVAEEncode", [False], [("vae", "VAE", 14, False), ("images", "LATENT", 9, False)],
              [("latent", "LATENT", [10])], mode=4),
        _node(12, "PrimitiveNode", [7, "fixed"], outputs=[("INT", "INT", [13])]),
    ]
    if link_objects:
        links = [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), l)) for l in links]
    return {"last_node_id": 12, "last_link_id": 14, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {}, "version": 0.4}


@pytest.mark.parametrize("link_objects", [False, True])
def test_ui_workflow_converts_like_the_editor(link_objects):
    load_node_packs()
    api = Workflow.from_dict(t2v_ui(link_objects)).to_dict()
    assert set(api) == {"1", "2", "3", "4", "5", "6", "7"}          # note, reroute, primitive, muted, bypassed gone
    den = api["5"]["inputs"]
    assert den["model"] == ["1", 0]                                  # through the reroute
    assert den["seed"] == 7                                          # the PrimitiveNode's value
    assert den["steps"] == 2 and den["guidance"] == 5.0 and den["scheduler"] == "unipc"   # "randomize" skipped
    assert den["negative"] == ["3", 0] and den["latent"] == ["4", 0]
    assert api["6"]["inputs"]["latent"] == ["5", 0]                  # through the bypassed node
    assert api["2"]["_meta"]["title"] == "Prompt"
    assert api["4"]["inputs"] == {"width": 32, "height": 32, "num_frames": 5, "batch": 1}


def test_ui_workflow_runs(tmp_path):
    load_node_packs()
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(t2v_ui()))
    res = Executor(output_dir=tmp_path).run(Workflow.load(path))
    files = [v["path"] for v in res.outputs.values()]
    assert len(files) == 1 and files[0].endswith(".npy")


def test_ui_workflow_errors_name_the_node():
    load_node_packs()
    ui = t2v_ui()
    ui["nodes"][3]["type"] = "SomeCustomNodeNotInstalled"
    with pytest.raises(WorkflowError) as e:
        Workflow.from_dict(ui)
    assert "node 4 (SomeCustomNodeNotInstalled)" in str(e.value) and "unknown node type" in str(e.value)



def _link(id, origin, oslot, target, tslot, type):
    return {"id": id, "origin_id": origin, "origin_slot": oslot, "target_id": target, "target_slot": tslot,
            "type": type}


PROMPTS = {   # nested: two text encodes behind one TEXT_ENCODER input
    "id": "5e1f-prompts", "name": "Prompts", "inputNode": {"id": -10}, "outputNode": {"id": -20},
    "inputs": [{"name": "text_encoder", "type": "TEXT_ENCODER", "linkIds": [1, 2]}],
    "outputs": [{"name": "positive", "type": "CONDITIONING", "linkIds": [3]},
                {"name": "negative", "type": "CONDITIONING", "linkIds": [4]}],
    "nodes": [
        _node(1, "WanTextEncode", ["a red fox"], [("text_encoder", "TEXT_ENCODER", 1, False)],
              [("conditioning", "CONDITIONING", [3])], title="Prompt"),
        _node(2, "WanTextEncode", [""], [("text_encoder", "TEXT_ENCODER", 2, False)],
              [("conditioning", "CONDITIONING", [4])]),
    ],
    "links": [_link(1, -10, 0, 1, 0, "TEXT_ENCODER"), _link(2, -10, 0, 2, 0, "TEXT_ENCODER"),
              _link(3, 1, 0, -20, 0, "CONDITIONING"), _link(4, 2, 0, -20, 1, "CONDITIONING")],
}

SAMPLER = {   # the prompts subgraph, a denoise whose seed is a promoted widget, and a pass-through output
    "id": "9a7c-sampler", "name": "Sampler", "inputNode": {"id": -10}, "outputNode": {"id": -20},
    "inputs": [{"name": "model", "type": "MODEL", "linkIds": [1]},
               {"name": "text_encoder", "type": "TEXT_ENCODER", "linkIds": [2]},
               {"name": "latent", "type": "LATENT", "linkIds": [3, 8]},
               {"name": "seed", "type": "INT", "linkIds": [4]}],
    "outputs": [{"name": "latent", "type": "LATENT", "linkIds": [7]},
                {"name": "initial", "type": "LATENT", "linkIds": [8]}],
    "nodes": [
        _node(5, "5e1f-prompts", [], [("text_encoder", "TEXT_ENCODER", 2, False)],
              [("positive", "CONDITIONING", [5]), ("negative", "CONDITIONING", [6])]),
        _node(3, "WanDenoise", [999, "randomize", 2, 5.0, "unipc", 3.0, 1.0, 0, 10000, True, False],
              [("model", "MODEL", 1, False), ("positive", "CONDITIONING", 5, False),
               ("latent", "LATENT", 3, False), ("seed", "INT", 4, True), ("negative", "CONDITIONING", 6, False)],
              [("latent", "LATENT", [7])]),
    ],
    "links": [_link(1, -10, 0, 3, 0, "MODEL"), _link(2, -10, 1, 5, 0, "TEXT_ENCODER"),
              _link(3, -10, 2, 3, 2, "LATENT"), _link(4, -10, 3, 3, 3, "INT"),
              _link(5, 5, 0, 3, 1, "CONDITIONING"), _link(6, 5, 1, 3, 4, "CONDITIONING"),
              _link(7, 3, 0, -20, 0, "LATENT"), _link(8, -10, 2, -20, 1, "LATENT")],
}


def subgraph_ui(mode=0, seed=7):
    """t2v_ui's prompts and denoise packed into nested subgraphs, as the ComfyUI frontend saves them."""
    nodes = [
        _node(1, "WanPipelineLoader", ["tiny", "float32", "float32", "float32", "auto"],
              outputs=[("model", "MODEL", [1]), ("text_encoder", "TEXT_ENCODER", [3]), ("vae", "VAE", [8])]),
        _node(4, "WanEmptyLatentVideo", [32, 32, 5, 1], outputs=[("latent", "LATENT", [6, 12])]),
        _node(20, "9a7c-sampler", [seed],
              [("model", "MODEL", 1, False), ("text_encoder", "TEXT_ENCODER", 3, False),
               ("latent", "LATENT", 6, False), ("seed", "INT", None, True)],
              [("latent", "LATENT", [10]), ("initial", "LATENT", [11])], mode=mode),
        _node(6, "WanVAEDecode", [False], [("vae", "VAE", 8, False), ("latent", "LATENT", 10, False)],
              [("images", "IMAGE", [13])]),
        _node(7, "SaveTensor", ["ui", "npy"], [("tensor", "LATENT,IMAGE", 13, False)]),
        _node(8, "SaveTensor", ["initial", "npy"], [("tensor", "LATENT,IMAGE", 11, False)]),
    ]
    links = [[1, 1, 0, 20, 0, "MODEL"], [3, 1, 1, 20, 1, "TEXT_ENCODER"], [6, 4, 0, 20, 2, "LATENT"],
             [8, 1, 2, 6, 0, "VAE"], [10, 20, 0, 6, 1, "LATENT"], [11, 20, 1, 8, 0, "LATENT"],
             [13, 6, 0, 7, 0, "IMAGE"]]
    return {"nodes": nodes, "links": links, "definitions": {"subgraphs": [SAMPLER, PROMPTS]}, "version": 0.4}


def test_subgraphs_are_inlined_like_the_editor_does():
    load_node_packs()
    api = Workflow.from_dict(subgraph_ui()).to_dict()
    assert set(api) == {"1", "4", "20:3", "20:5:1", "20:5:2", "6", "7", "8"}
    den = api["20:3"]["inputs"]
    assert den["model"] == ["1", 0] and den["latent"] == ["4", 0]          # through the instance's inputs
    assert den["positive"] == ["20:5:1", 0] and den["negative"] == ["20:5:2", 0]   # out of the nested one
    assert den["seed"] == 7 and den["steps"] == 2                          # the instance's promoted widget
    assert api["20:5:1"]["inputs"]["text_encoder"] == ["1", 1] and api["20:5:1"]["_meta"]["title"] == "Prompt"
    assert api["6"]["inputs"]["latent"] == ["20:3", 0]                     # instance output 0
    assert api["8"]["inputs"]["tensor"] == ["4", 0]                        # output 1 passes input 2 through


def test_subgraph_workflow_runs_like_the_flat_one(tmp_path):
    load_node_packs()
    flat = Executor(output_dir=tmp_path / "flat").run(Workflow.from_dict(t2v_ui()))
    nested = Executor(output_dir=tmp_path / "nested").run(Workflow.from_dict(subgraph_ui()))
    import numpy as np
    a = np.load([v["path"] for v in flat.outputs.values()][0])
    b = np.load([v["path"] for k, v in nested.outputs.items() if k == "7"][0])
    assert np.array_equal(a, b)


def test_muted_and_bypassed_instances():
    load_node_packs()
    api = ui_to_api(subgraph_ui(mode=4))
    assert not any(":" in k for k in api) and "20" not in api
    assert api["6"]["inputs"]["latent"] == ["4", 0]          # bypass: the LATENT input passes through
    api = ui_to_api(subgraph_ui(mode=2))
    assert not any(":" in k for k in api) and "latent" not in api["6"]["inputs"]


def test_subgraph_errors_name_the_inner_node():
    load_node_packs()
    ui = subgraph_ui()
    sampler = json.loads(json.dumps(SAMPLER))
    sampler["nodes"][1]["type"] = "SomeCustomSampler"
    ui["definitions"]["subgraphs"][0] = sampler
    with pytest.raises(WorkflowError) as e:
        Workflow.from_dict(ui)
    assert "node 20:3 (SomeCustomSampler)" in str(e.value) and "unknown node type" in str(e.value)
    prompts = json.loads(json.dumps(PROMPTS))
    prompts["nodes"].append(_node(9, "9a7c-sampler", []))
    ui = subgraph_ui()
    ui["definitions"]["subgraphs"][1] = prompts
    with pytest.raises(WorkflowError, match="contains itself"):
        Workflow.from_dict(ui)


def test_control_after_generate_values_are_skipped_for_any_input_that_declares_it():
    # ComfyUI's PrimitiveInt has `value` (not a seed name) followed by its control widget.
    from graphrt import Input, Node, Output, register_node
    from graphrt.registry import unregister_node

    @register_node
    class _Counter(Node):
        CATEGORY = "test"
        OUTPUT_NODE = True
        INPUTS = [Input("value", "INT", default=0, control_after_generate=True), Input("label", "STRING", default="")]
        OUTPUTS = [Output("value", "INT")]

        def execute(self, ctx, value, label):
            return (value,)

    try:
        ui = {"nodes": [_node(1, "_Counter", [42, "fixed", "x"], outputs=[("value", "INT", [])])], "links": []}
        assert ui_to_api(ui)["1"]["inputs"] == {"value": 42, "label": "x"}
        assert _Counter.input_map()["value"].options()["control_after_generate"] is True
    finally:
        unregister_node("_Counter")
