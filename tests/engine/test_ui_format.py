"""UI-format workflows (nodes + links with positional widgets_values) imported into the API format."""
from __future__ import annotations

import json

import pytest

from graphrt import Executor, Workflow
from graphrt.errors import WorkflowError
from graphrt.registry import load_node_packs


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
    ui["nodes"][3]["type"] = "EmptyHunyuanLatentVideo"
    with pytest.raises(WorkflowError) as e:
        Workflow.from_dict(ui)
    assert "node 4 (EmptyHunyuanLatentVideo)" in str(e.value) and "unknown node type" in str(e.value)
    ui = t2v_ui()
    ui["definitions"] = {"subgraphs": [{"id": "x"}]}
    with pytest.raises(WorkflowError, match="subgraphs"):
        Workflow.from_dict(ui)
