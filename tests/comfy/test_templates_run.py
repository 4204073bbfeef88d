"""ComfyUI's official Wan templates (UI format, subgraphs included) validate and run unchanged.

The JSON files in tests/comfy/templates/ are copied verbatim from the `comfyui-workflow-templates-json`
package 0.1.123 (MIT, Comfy Org; LICENSE beside them): Wan2.1 T2V, I2V and FLF2V, Wan2.2 14B T2V, I2V and
FLF2V, TI2V-5B and the three VACE 14B templates (T2V, V2V, reference-to-video).

Each runs on tiny random models written in ComfyUI's single-file formats into a temporary models folder
under the file names the template asks for (tiny_comfy_files.py), with tiny input images / video under
the names its LoadImage / LoadVideo nodes ask for. At full size (up to 1280×704, 81–121 frames, 20–30
steps) a run takes far too long here, so after loading, each test sets sizes and steps through the
workflow dict — width / height 32, length 5 frames, 2 sampling steps (the Wan2.2 experts split them 1 + 1)
— leaving the graph itself (nodes, links, subgraph structure, samplers, shifts, CFG) as the template has it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from graphrt import Executor, Workflow
from graphrt.registry import load_node_packs
from graphrt.validate import validate
from nodes.comfy.comfy_files import set_input_dir
from nodes.wan.checkpoints import model_folders
from tests.comfy.tiny_comfy_files import shared_models, tiny_image

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = Path(__file__).resolve().parent / "templates"
NAMES = sorted(p.stem for p in TEMPLATES.glob("*.json"))
SIZE_NODES = ("EmptyHunyuanLatentVideo", "WanImageToVideo", "WanFirstLastFrameToVideo", "WanVaceToVideo",
              "Wan22ImageToVideoLatent")
LENGTH, SIZE, STEPS = 5, 32, 2


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The models folder and an input folder with every file the templates load."""
    load_node_packs()
    models = shared_models(tmp_path_factory)
    input_dir = tmp_path_factory.mktemp("comfy-input")
    from PIL import Image
    from nodes.wan import media
    for i, name in enumerate(NAMES):
        for node in Workflow.load(TEMPLATES / f"{name}.json").nodes.values():
            if node["class_type"] == "LoadImage":
                Image.fromarray((tiny_image(48, 40, seed=i) * 255).round().astype(np.uint8)).convert("RGB").save(
                    input_dir / node["inputs"]["image"])
            elif node["class_type"] == "LoadVideo":
                media.save_mp4(np.stack([tiny_image(48, 40, seed=j) for j in range(9)]),
                               input_dir / node["inputs"]["file"], fps=16)
    models_before, input_before = model_folders.set_models_dir(models.root), set_input_dir(input_dir)
    yield models.root, input_dir
    model_folders.set_models_dir(models_before)
    set_input_dir(input_before)


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)


def _set_source(nodes: dict, link, value) -> None:
    """Set the constant behind a link: a Primitive* node, through ComfySwitchNode's both branches."""
    src = nodes[link[0]]
    if src["class_type"].startswith("Primitive"):
        src["inputs"]["value"] = value
    elif src["class_type"] == "ComfySwitchNode":
        for branch in ("on_false", "on_true"):
            if _is_link(src["inputs"].get(branch)):
                _set_source(nodes, src["inputs"][branch], value)


def shrink(wf: Workflow) -> Workflow:
    """Tiny sizes and 2 steps, by values only (see the module docstring)."""
    nodes = wf.nodes
    for node in nodes.values():
        ins, kind = node["inputs"], node["class_type"]
        if kind in SIZE_NODES:
            for key, value in (("width", SIZE), ("height", SIZE), ("length", LENGTH)):
                if key in ins and not _is_link(ins[key]):
                    ins[key] = value
        elif kind == "ComfyMathExpression":            # length = floor(seconds * fps) + 1 in the Wan2.2 subgraphs
            _set_source(nodes, ins["values.a"], (LENGTH - 1) / 16)
        elif kind == "KSampler":
            ins["steps"] = STEPS
        elif kind == "KSamplerAdvanced":
            # steps -> 2; the two experts' split (the first stage's end, the second's start) -> step 1
            split = "end_at_step" if ins["start_at_step"] == 0 else "start_at_step"
            for key, value in (("steps", STEPS), (split, 1)):
                if _is_link(ins[key]):
                    _set_source(nodes, ins[key], value)
                elif 0 < ins[key] < 10000:
                    ins[key] = value
    return wf


def test_every_template_validates(folders):
    for name in NAMES:
        errors = validate(Workflow.load(TEMPLATES / f"{name}.json"))
        assert errors == [], f"{name}: {[str(e) for e in errors]}"


def test_a_template_without_its_model_files_names_each_one(tmp_path):
    load_node_packs()
    before = model_folders.set_models_dir(tmp_path / "empty")
    try:
        errors = validate(Workflow.load(TEMPLATES / "text_to_video_wan.json"))
    finally:
        model_folders.set_models_dir(before)
    assert sorted(e.input for e in errors) == ["clip_name", "unet_name", "vae_name"]
    assert all(str(tmp_path / "empty") in e.message for e in errors)


def test_cli_validates_a_subgraph_template_with_the_models_folder_from_the_environment(folders):
    models, inputs = folders
    env = {**os.environ, model_folders.MODELS_DIR_ENV: str(models), "GRAPHRT_INPUT_DIR": str(inputs)}
    done = subprocess.run([sys.executable, "-m", "graphrt", "validate", str(TEMPLATES / "video_wan2_2_14B_i2v.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid" in done.stdout


@pytest.mark.parametrize("name", NAMES)
def test_template_runs_end_to_end_and_writes_its_video(folders, tmp_path, name):
    from nodes.wan import media
    wf = shrink(Workflow.load(TEMPLATES / f"{name}.json"))
    result = Executor(output_dir=str(tmp_path)).run(wf)
    videos = [f for ui in result.ui.values() for f in ui.get("files", []) if f.endswith(".mp4")]
    assert len(videos) == 1, result.ui
    info = media.probe_video(videos[0])
    assert (info["frames"], info["width"], info["height"]) == (LENGTH, SIZE, SIZE)
    frames, _ = media.load_video(videos[0])
    assert frames.std() > 0.01              # something was decoded, not a constant frame
