"""VACE end to end: WanVaceConditioning -> WanDenoise -> WanTrimVideoLatent -> decode, against diffusers'
WanVACEPipeline on a tiny random VACE model: control video + mask, one reference image, several
reference images of different sizes (an ImageList), references without a control video.

Tolerances (max |ours − diffusers| / max |diffusers|, fp32): frames 5e-4; final latents 1e-4, ours
being WanTrimVideoLatent's output and diffusers' its `output_type="latent"` result with the
reference frames dropped as the pipeline drops them before decoding (`latents[:, :, n_refs:]`)."""
from __future__ import annotations

import numpy as np
import pytest

from graphrt import Executor, GraphBuilder, validate
from graphrt.registry import load_node_packs
from tests.wan.parity import rel_err
from tests.wan.reference import TINY_TRANSFORMER, build_tiny_wan_pipeline, load_image_node, reference_outputs

from nodes.wan import media
from nodes.wan.pipelines.noise import make_noise

H, W, F = 32, 48, 9
FRAMES_TOL, LATENT_TOL = 5e-4, 1e-4
# Reference pictures (height, width): a wide one that is scaled up, one of odd size (floored to 16×32
# with Lanczos before fitting), and a tall one that is scaled down and fitted by its height.
REFS = {"ref": (24, 40), "ref_odd": (21, 35), "ref_tall": (40, 24)}


def _picture(h, w, seed):
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 0.15, np.float32)
    img[h // 6:h - h // 6, w // 5:w - w // 5] = rng.uniform(0.2, 1.0, 3)        # a coloured box
    img += rng.uniform(-0.1, 0.1, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 1)


@pytest.fixture(scope="module")
def vace(tmp_path_factory):
    import torch
    from PIL import Image
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel
    load_node_packs()
    tmp = tmp_path_factory.mktemp("vace")
    base = build_tiny_wan_pipeline(tmp / "t2v")
    torch.manual_seed(4)
    transformer = WanVACETransformer3DModel(**TINY_TRANSFORMER, vace_layers=[0, 1], vace_in_channels=96).eval()
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    pipe = WanVACEPipeline(tokenizer=base.tokenizer, text_encoder=base.text_encoder, vae=base.vae,
                           transformer=transformer, scheduler=base.scheduler)
    pipe.save_pretrained(tmp / "pipe")
    yy, xx = np.mgrid[0:H, 0:W]
    video = np.stack([np.stack([np.sin(xx / 4 + i) * 0.4 + 0.5, np.cos(yy / 3 - i) * 0.4 + 0.5,
                                (xx + yy + 5 * i) % 17 / 17.0], -1) for i in range(F)]).astype(np.float32)
    mask = np.zeros((F, H, W, 3), np.float32)
    mask[:, :, W // 2:] = 1.0                       # regenerate the right half
    mask[4:] = 1.0                                  # and everything after frame 4
    paths = {"video": media.save_mp4(video, tmp / "control.mp4"), "mask": media.save_mp4(mask, tmp / "mask.mp4")}
    for seed, (name, (h, w)) in enumerate(REFS.items()):
        Image.fromarray((_picture(h, w, seed) * 255).astype(np.uint8)).save(tmp / f"{name}.png")
        paths[name] = tmp / f"{name}.png"
    # one executor: the loader and text encoders stay cached from case to case, as for a user re-running
    return tmp, pipe, paths, Executor(output_dir=tmp / "out")


def vace_graph(tmp, paths, *, video=False, mask=False, ref_batch=(), ref_lists=(), strength=1.0):
    """The user's graph. `ref_batch`: images fed to reference_image (one LoadImage, so one picture);
    `ref_lists`: ImageList nodes chained in order, each given a tuple of pictures."""
    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source=str(tmp / "pipe"))
    pos = g.node("WanTextEncode", text_encoder=load[1], text="a red box")
    neg = g.node("WanTextEncode", text_encoder=load[1], text="")
    kw = {}
    if video:
        kw["control_video"] = g.node("LoadVideoFrames", path=str(paths["video"]))[0]
    if mask:
        kw["control_masks"] = g.node("LoadVideoFrames", path=str(paths["mask"]))[0]
    for name in ref_batch:
        kw["reference_image"] = load_image_node(g, paths[name])[0]
    chain = None
    for names in ref_lists:
        slots = {f"image_{i + 1}": load_image_node(g, paths[n])[0] for i, n in enumerate(names)}
        chain = g.node("ImageList", **slots, **({} if chain is None else {"images": chain[0]}))
    if chain is not None:
        kw["reference_images"] = chain[0]
    vc = g.node("WanVaceConditioning", positive=pos[0], negative=neg[0], vae=load[2], width=W, height=H,
                num_frames=F, strength=strength, **kw)
    den = g.node("WanDenoise", model=load[0], positive=vc[0], negative=vc[1], latent=vc[2], steps=3, guidance=4.0,
                 noise=g.node("WanLoadNoise", path=str(tmp / "noise.npy"))[0])
    trim = g.node("WanTrimVideoLatent", latent=den[0], trim_amount=vc[3])
    dec = g.node("WanVAEDecode", vae=load[2], latent=trim[0])
    saves = {"frames": g.node("SaveTensor", tensor=dec[0], filename_prefix="vace", format="npy"),
             "latent": g.node("SaveTensor", tensor=trim[0], filename_prefix="vace_latent", format="npy"),
             "untrimmed": g.node("SaveTensor", tensor=den[0], filename_prefix="vace_untrimmed", format="npy")}
    return g, saves


CASES = {   # id: graph inputs; diffusers' reference_images is ref_batch + the ImageLists' pictures, in order
    "control+mask": dict(video=True, mask=True),
    "one-reference": dict(video=True, mask=True, ref_batch=("ref",), strength=0.7),
    "two-references-of-different-sizes": dict(video=True, ref_lists=(("ref_tall", "ref_odd"),)),
    "references-only-batch+chained-lists": dict(ref_batch=("ref",), ref_lists=(("ref_odd",), ("ref_tall",))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_vace_matches_diffusers(vace, case):
    from PIL import Image
    tmp, pipe, paths, ex = vace
    spec = CASES[case]
    ref_names = list(spec.get("ref_batch", ())) + [n for names in spec.get("ref_lists", ()) for n in names]
    n_refs = len(ref_names)
    noise = make_noise(9, (1, 16, n_refs + (F - 1) // 4 + 1, H // 8, W // 8))
    np.save(tmp / "noise.npy", noise)

    g, saves = vace_graph(tmp, paths, **spec)
    res = ex.run(g.to_workflow())
    ours = {k: np.load(res.outputs[h.id]["path"]) for k, h in saves.items()}

    def pil_frames(path):   # the very frames our graph read
        return [Image.fromarray(np.round(f * 255).astype(np.uint8)) for f in media.load_video(path)[0]]

    frames, latents = reference_outputs(
        pipe, noise, prompt="a red box", negative_prompt="", height=H, width=W, num_frames=F, num_inference_steps=3,
        guidance_scale=4.0, conditioning_scale=spec.get("strength", 1.0),
        video=pil_frames(paths["video"]) if spec.get("video") else None,
        mask=pil_frames(paths["mask"]) if spec.get("mask") else None,
        reference_images=[Image.open(paths[n]).convert("RGB") for n in ref_names] or None)
    assert ours["untrimmed"].shape == latents.shape == noise.shape    # diffusers keeps them in its latent output
    trimmed = latents[:, :, n_refs:]                                  # and drops them before decoding
    assert ours["frames"].shape == frames[0].shape == (F, H, W, 3)
    assert ours["latent"].shape == trimmed.shape
    errs = (rel_err(ours["frames"], frames[0]), rel_err(ours["latent"], trimmed),
            rel_err(ours["untrimmed"], latents))
    print(f"{case}: frames {errs[0]:.2e}, latents {errs[1]:.2e} (with the reference frames {errs[2]:.2e})")
    # The reference frames are checked too: on this tiny model a reference changes the video's own latent
    # frames by ~2e-4 only, but its own latent frame by ~5e-3 (e.g. two references swapped).
    assert errs[0] < FRAMES_TOL and errs[1] < LATENT_TOL and errs[2] < LATENT_TOL, errs


def test_image_list_node_order_and_errors():
    """ImageList: the chained list first, then image_1…; each frame of a batch one item; nothing is an error."""
    from nodes.image_nodes import ImageList
    a = np.zeros((2, 8, 16, 3), np.float32)
    a[1] = 1.0
    b = np.full((1, 24, 8, 3), 0.5, np.float32)
    (first,) = ImageList().execute(None, image_1=a)
    (both,) = ImageList().execute(None, images=first, image_2=b)
    assert [x.shape for x in both] == [(8, 16, 3), (8, 16, 3), (24, 8, 3)]
    assert both[0].max() == 0.0 and both[1].min() == 1.0
    with pytest.raises(ValueError, match="no images"):
        ImageList().execute(None)
    with pytest.raises(ValueError, match="image_1"):
        ImageList().execute(None, image_1=np.zeros((8, 8), np.float32))


def test_reference_images_needs_an_image_list(vace):
    """An IMAGE batch wired into reference_images is a validation error naming both types."""
    tmp, _, paths, _ = vace
    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source=str(tmp / "pipe"))
    pos = g.node("WanTextEncode", text_encoder=load[1], text="x")
    g.node("WanVaceConditioning", positive=pos[0], negative=pos[0], vae=load[2], width=W, height=H, num_frames=F,
           reference_images=load_image_node(g, paths["ref"])[0])
    errors = validate(g.to_workflow())
    text = " ".join(e.message for e in errors)
    assert "reference_images" in {e.input for e in errors} and "IMAGE_LIST" in text, text


def test_too_small_reference_fails_naming_the_node(vace):
    """Through the graph: a 40×4 reference cannot be fitted (sizes are floored to multiples of 8)."""
    from PIL import Image
    from graphrt.executor import NodeExecutionError
    tmp, _, paths, ex = vace
    Image.fromarray(np.zeros((4, 40, 3), np.uint8)).save(tmp / "thin.png")
    g = GraphBuilder()
    load = g.node("WanPipelineLoader", source=str(tmp / "pipe"))
    pos = g.node("WanTextEncode", text_encoder=load[1], text="a red box")
    refs = g.node("ImageList", image_1=load_image_node(g, paths["ref"])[0],
                  image_2=load_image_node(g, tmp / "thin.png")[0])
    vc = g.node("WanVaceConditioning", positive=pos[0], negative=pos[0], vae=load[2], width=W, height=H,
                num_frames=F, reference_images=refs[0])
    g.node("SaveTensor", tensor=vc[2], filename_prefix="never", format="npy")
    with pytest.raises(NodeExecutionError) as info:
        ex.run(g.to_workflow())
    text = str(info.value) + str(info.value.__cause__)
    assert "WanVaceConditioning" in text and "reference image 2 is 40×4" in text and "at least 8×8" in text, text


def test_vace_rejects_bad_inputs_clearly(vace):
    from nodes.wan import load_vae
    from nodes.wan.pipelines.vace_conditioning import vace_control
    tmp, _, _, _ = vace
    vae = load_vae(tmp / "pipe")
    with pytest.raises(ValueError, match="resize"):
        vace_control(vae, H, W, F, video=np.zeros((F, H, W + 16, 3), np.float32))
    with pytest.raises(ValueError, match="reference image 2 .* at least 8×8"):
        vace_control(vae, H, W, F, reference_images=[np.zeros((16, 16, 3)), np.zeros((4, 40, 3))])
    with pytest.raises(ValueError, match="reference image 1 has shape"):
        vace_control(vae, H, W, F, reference_images=[np.zeros((2, 16, 16, 3))])


def test_vace_template_runs(vace, monkeypatch):
    """The shipped VACE template, pointed at the tiny model and made small, runs to an MP4."""
    from pathlib import Path
    from graphrt import Workflow
    tmp, _, _, _ = vace
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)                     # the template's sample assets are repo-relative
    wf = Workflow.load(root / "workflows" / "wan21_vace_1.3b.json")
    res = Executor(output_dir=tmp / "template").run(wf, params={
        "source": str(tmp / "pipe"), "width": W, "height": H, "num_frames": F, "steps": 2})
    mp4 = [v["path"] for v in res.outputs.values()][0]
    info = media.probe_video(mp4)
    assert info["frames"] == F and (info["width"], info["height"]) == (W, H)
