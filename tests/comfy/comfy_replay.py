"""ComfyUI's algorithm in torch, for the comfy pack's parity tests (test-only: torch, diffusers, transformers).

ComfyUI itself is not installable here, so each function below re-implements, from ComfyUI's source
(a125cd84: comfy/latent_formats.py, comfy/utils.py, comfy/sd.py, comfy/clip_vision.py, comfy/sd1_clip.py,
comfy/model_base.py, comfy/ldm/wan/model.py, comfy/samplers.py, comfy/sample.py, comfy/sampler_helpers.py,
comfy/extra_samplers/uni_pc.py, comfy/k_diffusion/sampling.py, comfy/weight_adapter/lora.py, nodes.py,
comfy_extras/nodes_wan.py, comfy_extras/nodes_hunyuan.py), what ComfyUI computes, on the torch modules whose
weights the tiny model files hold (tiny_comfy_files.py): diffusers' WanTransformer3DModel /
WanVACETransformer3DModel and AutoencoderKLWan stand in for ComfyUI's WanModel / VaceWanModel and its Wan2.1 /
Wan2.2 VAEs, transformers' UMT5 / CLIP vision for its text and vision encoders.
Nothing here imports the implementation under test (nodes/comfy, nodes/wan/pipelines).

`ComfyReplay` runs a whole ComfyUI workflow (API format, as graphrt's Workflow.load gives it) node by node
with these functions: the reference the template tests compare a graphrt run with.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF

from nodes.wan.checkpoints.presets import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD, WAN22_LATENTS_MEAN, WAN22_LATENTS_STD

# ---- latent formats, images, VAE ----------------------------------------------------------------------------

def _mean_std(channels):
    """comfy/latent_formats.py Wan21 (16 channels) / Wan22 (48) latents_mean and latents_std (the presets' values)."""
    mean, std = (WAN21_LATENTS_MEAN, WAN21_LATENTS_STD) if channels == 16 else (WAN22_LATENTS_MEAN, WAN22_LATENTS_STD)
    return torch.tensor(mean).view(1, -1, 1, 1, 1), torch.tensor(std).view(1, -1, 1, 1, 1)


def process_in(x):
    """comfy/latent_formats.py Wan21 / Wan22 process_in."""
    mean, std = _mean_std(x.shape[1])
    return (x - mean) * 1.0 / std


def process_out(x):
    mean, std = _mean_std(x.shape[1])
    return x * std / 1.0 + mean


def latent_channels(transformer):
    """The model's latent format: Wan22 (48 channels) for the TI2V-5B (supported_models.py WAN22_T2V,
    out_dim 48), else Wan21 (16)."""
    return 48 if transformer.config.out_channels == 48 else 16


def common_upscale(s, width, height, method="bilinear", crop="center"):
    """comfy/utils.py common_upscale (4-D input)."""
    if crop == "center":
        old_w, old_h = s.shape[-1], s.shape[-2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        s = s.narrow(-2, y, old_h - y * 2).narrow(-1, x, old_w - x * 2)
    return TF.interpolate(s, size=(height, width), mode=method)


def upscale_images(images, width, height):
    """The Wan nodes' `common_upscale(img.movedim(-1, 1), w, h, "bilinear", "center").movedim(1, -1)`."""
    images = images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images, np.float32))
    return common_upscale(images.movedim(-1, 1), width, height).movedim(1, -1)


def vae_encode(vae, images):
    """comfy/sd.py VAE.encode for a video VAE: [N, H, W, 3] -> [1, 3, N, H, W] * 2 - 1 -> the posterior mean."""
    x = images[..., :3].movedim(-1, 1).movedim(1, 0).unsqueeze(0) * 2.0 - 1.0
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean


def vae_decode(vae, latent):
    """nodes.py VAEDecode: comfy/sd.py VAE.decode (process_output clamp((x + 1) / 2, 0, 1), channels last),
    the video's frames flattened to [B·T, H, W, 3]."""
    with torch.no_grad():
        frames = torch.clamp((vae.decode(latent).sample.float() + 1.0) / 2.0, min=0.0, max=1.0).movedim(1, -1)
    return frames.reshape(-1, *frames.shape[-3:])


# ---- text and image encoders --------------------------------------------------------------------------------

def comfy_tokens(spiece: bytes, text: str):
    """comfy/text_encoders/spiece_tokenizer.py (add_eos) as sd1_clip.SDTokenizer uses it: the ids of an
    unweighted prompt, then the end token 1."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_proto=spiece)
    return sp.encode(text) + [1]


def umt5(encoder, ids, n):
    """The encoder on ids padded to their length, attention mask on the first n, masked rows zeroed."""
    mask = torch.zeros(1, len(ids), dtype=torch.long)
    mask[0, :n] = 1
    with torch.no_grad():
        z = encoder(torch.tensor([ids]), attention_mask=mask).last_hidden_state
    return z * mask.unsqueeze(-1)


def text_embeds(encoder, spiece: bytes, text: str):
    """CLIPTextEncode with ComfyUI's Wan UMT5 (comfy/text_encoders/wan.py: min_length 512, pad 0,
    enable_attention_masks, zero_out_masked): [1, 512, d_model]. Weighted "(text:w)" syntax is not replayed."""
    assert "(" not in text and ")" not in text, "prompt weights are not replayed"
    ids = comfy_tokens(spiece, text)
    n = len(ids)
    return umt5(encoder, ids + [0] * max(0, 512 - n), n)


def clip_vision_encode(clip, image, crop: str):
    """nodes.py CLIPVisionEncode -> comfy/clip_vision.py clip_preprocess (crop="center" keeps the aspect,
    "none" squashes; antialiased bicubic, 8-bit levels, OpenAI mean/std) and the penultimate layer's states
    (intermediate_output=-2)."""
    size = clip.config.image_size
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    x = image[..., :3].movedim(-1, 1)
    if not (x.shape[2] == size and x.shape[3] == size):
        if crop == "center":
            scale = size / min(x.shape[2], x.shape[3])
            scale_size = (round(scale * x.shape[2]), round(scale * x.shape[3]))
        else:
            scale_size = (size, size)
        x = TF.interpolate(x, size=scale_size, mode="bicubic", antialias=True)
        h, w = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, h:h + size, w:w + size]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0
    with torch.no_grad():
        return clip(pixel_values=(x - mean) / std, output_hidden_states=True).hidden_states[-2]


# ---- the model function: model_base.py WAN21 / WAN21_Vace, BaseModel._apply_model, samplers.py CFG --------

def concat_cond(noise_shape, extra_channels, image=None, mask=None, image_to_video=True):
    """comfy/model_base.py WAN21.concat_cond: the concat latent image upscaled to the noise, process_in'ed 16
    channels at a time, batched; then (I2V models) 4 mask channels 1 - concat_mask in front."""
    if extra_channels == 0:
        return None
    if image is None:
        image = torch.zeros([noise_shape[0], extra_channels, *noise_shape[2:]])
    else:
        assert image.shape[-2:] == tuple(noise_shape[-2:])          # common_upscale to the same size: as is
        image = image.clone()
        for i in range(0, image.shape[1], 16):
            image[:, i:i + 16] = process_in(image[:, i:i + 16])
        image = image.repeat(math.ceil(noise_shape[0] / image.shape[0]), 1, 1, 1, 1)[:noise_shape[0]]
    if extra_channels != image.shape[1] + 4:
        if not image_to_video or extra_channels == image.shape[1]:
            return image
    if image.shape[1] > extra_channels - 4:
        image = image[:, :extra_channels - 4]
    if mask is None:
        mask = torch.zeros([noise_shape[0], 4, *noise_shape[2:]])
    else:
        if mask.shape[1] != 4:
            mask = torch.mean(mask, dim=1, keepdim=True)
        mask = 1.0 - mask
        assert mask.shape[-2:] == tuple(noise_shape[-2:])            # common_upscale to the same size: as is
        if mask.shape[-3] < noise_shape[-3]:
            mask = TF.pad(mask, (0, 0, 0, 0, 0, noise_shape[-3] - mask.shape[-3]), mode="constant", value=0)
        if mask.shape[1] == 1:
            mask = mask.repeat(1, 4, 1, 1, 1)
        mask = mask.repeat(math.ceil(noise_shape[0] / mask.shape[0]), 1, 1, 1, 1)[:noise_shape[0]]
    return torch.cat((mask, image), dim=1)


def vace_context(noise_shape, vace_frames=None, vace_mask=None):
    """comfy/model_base.py WAN21_Vace.extra_conds: each control latent process_in'ed 16 channels at a time,
    its 64 mask channels appended, stacked on dim 1 ([B, n, 96, T, h, w])."""
    if vace_frames is None:
        vace_frames = [torch.zeros([noise_shape[0], 32, *noise_shape[2:]])]
    if vace_mask is None:
        vace_mask = [torch.ones([noise_shape[0], 64, *noise_shape[2:]])] * len(vace_frames)
    out = []
    for frames, mask in zip(vace_frames, vace_mask):
        vf = frames.clone()
        for i in range(0, vf.shape[1], 16):
            vf[:, i:i + 16] = process_in(vf[:, i:i + 16])
        out.append(torch.cat([vf, mask], dim=1))
    return torch.stack(out, dim=1)


def model_inputs(transformer, cond, noise_shape):
    """What one conditioning entry [context, options] gives the diffusion model (WAN21 / WAN21_Vace
    extra_conds + concat_cond), as keyword arguments of the diffusers module."""
    context, options = cond
    inputs = dict(encoder_hidden_states=context)
    extra = transformer.config.in_channels - noise_shape[1]
    inputs["c_concat"] = concat_cond(noise_shape, extra, options.get("concat_latent_image"),
                                     options.get("concat_mask", options.get("denoise_mask")),
                                     image_to_video=transformer.config.in_channels == 36)
    clip = options.get("clip_vision_output")
    if clip is not None:
        fea = clip["penultimate_hidden_states"]
        embedder = transformer.condition_embedder.image_embedder
        if getattr(embedder, "pos_embed", None) is not None:
            # ComfyUI's FLF2V MLPProj adds emb_pos to the two images' tokens joined on dim -2; diffusers'
            # WanImageEmbedding joins them itself from a [2, tokens, C] batch (view(-1, 2 * tokens, C))
            fea = fea.reshape(-1, fea.shape[1] // 2, fea.shape[2])
        inputs["encoder_hidden_states_image"] = fea
    if "vace_layers" in transformer.config:
        layers = transformer.config.vace_layers
        # VaceWanModel.vace_layers_mapping: a VACE block after every num_layers // len(vace_layers)-th block
        assert list(range(0, transformer.config.num_layers, transformer.config.num_layers // len(layers))) == layers
        ctx = vace_context(noise_shape, options.get("vace_frames"), options.get("vace_mask"))
        strength = options.get("vace_strength", [1.0] * ctx.shape[1])
        assert ctx.shape[1] == 1, "one control video (VaceWanModel loops over several)"
        inputs["control_hidden_states"] = ctx[:, 0]
        inputs["control_hidden_states_scale"] = torch.tensor([float(strength[0])] * len(layers))
    return inputs


def wan22_timesteps(transformer, denoise_mask, t, noise_shape):
    """comfy/model_base.py WAN22.process_timestep: one timestep per latent frame, the denoise mask's mean over
    (channels, h, w) times t ([B, T]; 0 on a known frame). ComfyUI's WanModel embeds them per frame and
    repeats each frame's modulation over the frame's tokens (comfy/ldm/wan/model.py repeat_e); diffusers'
    module takes the same as one timestep per token ([B, T·h/2·w/2])."""
    per_frame = (torch.mean(denoise_mask, dim=(1, 3, 4), keepdim=True)
                 * t.view([t.shape[0]] + [1] * (denoise_mask.ndim - 1))).reshape(t.shape[0], -1)
    _, ph, pw = transformer.config.patch_size
    return per_frame.repeat_interleave((noise_shape[-2] // ph) * (noise_shape[-1] // pw), dim=1)


def wan_model(transformer, positive, negative, cfg, noise_shape, denoise_mask=None):
    """samplers.py sampling_function (at cfg 1 the uncond pass is skipped: calc_cond_batch gives 0 for it)
    and cfg_function, over BaseModel._apply_model for CONST / ModelSamplingDiscreteFlow:
    denoised = x - model(cat(x, c_concat), sigma * 1000, ...) * sigma. `denoise_mask` (the LATENT's noise
    mask as prepare_mask shapes it) reaches WAN22's extra_conds and process_timestep (TI2V-5B only)."""
    assert len(positive) == 1 and len(negative) == 1, "one conditioning entry each (no area / combine)"
    conds = [model_inputs(transformer, positive[0], noise_shape), model_inputs(transformer, negative[0], noise_shape)]
    if denoise_mask is not None:
        # WAN21 models take a denoise mask as concat_cond's mask and scale_latent_inpaint re-noises the known
        # part (BaseModel): not replayed
        assert latent_channels(transformer) == 48, "a noise mask on a WAN21 model is not replayed"

    def denoised(inputs, x, sigma):
        inputs = dict(inputs)
        c_concat = inputs.pop("c_concat")
        xc = x if c_concat is None else torch.cat([x, c_concat], dim=1)
        t = (sigma * 1000).float()
        if denoise_mask is not None:
            t = wan22_timesteps(transformer, denoise_mask, t, noise_shape)
        with torch.no_grad():
            out = transformer(xc, t, return_dict=False, **inputs)[0].float()
        return x - out * sigma.view(-1, 1, 1, 1, 1)

    def model(x, sigma):
        cond = denoised(conds[0], x, sigma)
        uncond = torch.zeros_like(x) if math.isclose(cfg, 1.0) else denoised(conds[1], x, sigma)
        return uncond + (cond - uncond) * cfg
    return model


def torch_model(ref, pos, neg, cfg):
    """BaseModel._apply_model (CONST) for cond and uncond, then cfg_function (text-to-video: context only)."""
    def model(x, sigma):
        t = (sigma * 1000).float()
        s = sigma.view(-1, 1, 1, 1, 1)
        with torch.no_grad():
            dc = x - ref(x, t, pos, return_dict=False)[0].float() * s
            du = x - ref(x, t, neg, return_dict=False)[0].float() * s
        return du + (dc - du) * cfg
    return model


# ---- sampling -----------------------------------------------------------------------------------------------

def comfy_sigmas(steps, sampler, denoise=1.0, shift=8.0):
    """ModelSamplingDiscreteFlow's table, the simple scheduler, KSampler.calculate_sigmas / set_steps."""
    table = (torch.arange(1, 1001, 1) / 1000) * 1000
    t = table / 1000
    table = shift * t / (1 + (shift - 1) * t)

    def schedule(n):
        if sampler == "uni_pc":         # DISCARD_PENULTIMATE_SIGMA_SAMPLERS
            n += 1
        ss = len(table) / n
        s = torch.FloatTensor([float(table[-(1 + int(x * ss))]) for x in range(n)] + [0.0])
        return torch.cat([s[:-2], s[-1:]]) if sampler == "uni_pc" else s

    if denoise > 0.9999:
        return schedule(steps)
    return schedule(int(steps / denoise))[-(steps + 1):]


def comfy_noise(seed, shape):
    """comfy/sample.py prepare_noise: torch.randn on the CPU generator of torch.manual_seed(seed)."""
    return torch.randn(shape, generator=torch.manual_seed(seed), dtype=torch.float32)


def euler(model, x, sigmas):
    """k-diffusion's sample_euler as ComfyUI runs it (s_churn 0)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def uni_pc(model, x, sigmas):
    """comfy/extra_samplers/uni_pc.py sample_unipc (bh1, data prediction, multistep, lower order final)."""
    if sigmas[-1] == 0:
        sigmas[-1] = 0.001                          # in place, as ComfyUI (it rescales with it afterwards)
    lmc = lambda s: 0.5 * torch.log(1 / ((s * s) + 1))                          # noqa: E731
    std = lambda s: torch.sqrt(1. - torch.exp(2. * lmc(s)))                     # noqa: E731
    lam = lambda s: lmc(s) - 0.5 * torch.log(1. - torch.exp(2. * lmc(s)))       # noqa: E731
    dims = lambda v: v[(...,) + (None,) * 4]                                    # noqa: E731

    def data_pred(x, t):
        s = t.view(-1, 1, 1, 1, 1)
        inp = x * ((s ** 2 + 1.0) ** 0.5)
        eps = (inp - model(inp, t)) / s
        return (x - dims(std(t)) * eps) / dims(torch.exp(lmc(t)))

    def update(x, model_prev, t_prev, t, order, use_corrector):
        lp0, lt, m0 = lam(t_prev[-1]), lam(t), model_prev[-1]
        sp0, st, alpha_t = std(t_prev[-1]), std(t), torch.exp(lmc(t))
        h = lt - lp0
        rks, d1s = [], []
        for i in range(1, order):
            rk = ((lam(t_prev[-(i + 1)]) - lp0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks = torch.tensor(rks + [1.])
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k, fact, b_h, R, b = h_phi_1 / hh - 1, 1, hh, [], []
        for i in range(1, order + 1):
            R.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * fact / b_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        R, b = torch.stack(R), torch.tensor(b)
        d1s = torch.stack(d1s, dim=1) if d1s else None
        x_t_ = dims(st / sp0) * x - dims(alpha_t * h_phi_1) * m0
        pred = 0
        if d1s is not None:
            rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
            pred = torch.tensordot(d1s, rhos_p, dims=([1], [0]))
        x_t = x_t_ - dims(alpha_t * b_h) * pred
        model_t = None
        if use_corrector:
            rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(R, b)
            model_t = data_pred(x_t, t)
            corr = torch.tensordot(d1s, rhos_c[:-1], dims=([1], [0])) if d1s is not None else 0
            x_t = x_t_ - dims(alpha_t * b_h) * (corr + rhos_c[-1] * (model_t - m0))
        return x_t, model_t

    x = x / torch.sqrt(1.0 + sigmas[0] ** 2.0)
    steps, order = len(sigmas) - 1, min(3, len(sigmas) - 2)
    vec = lambda i: sigmas[i].expand(x.shape[0])                                # noqa: E731
    for k in range(steps):
        if k == 0:
            model_prev, t_prev = [data_pred(x, vec(0))], [vec(0)]
        elif k < order:
            x, mx = update(x, model_prev, t_prev, vec(k), k, True)
            model_prev.append(data_pred(x, vec(k)) if mx is None else mx)
            t_prev.append(vec(k))
        else:
            for step in range(k, k + 1 + (k == steps - 1)):
                x, mx = update(x, model_prev, t_prev, vec(step), min(order, steps + 1 - step), step != steps)
                t_prev, model_prev = t_prev[1:] + [vec(step)], model_prev[1:] + model_prev[-1:]
                if step < steps:
                    model_prev[-1] = data_pred(x, vec(step)) if mx is None else mx
    return x / torch.exp(lmc(sigmas[-1]))


SAMPLERS = {"euler": euler, "uni_pc": uni_pc}


def x0_inpaint(model, denoise_mask, latent_image):
    """samplers.py KSamplerX0Inpaint around the model, for WAN22 (whose scale_latent_inpaint hands the latent
    image back as is): the known part of x set to the clean latent before the call, and of the result after."""
    latent_mask = 1.0 - denoise_mask

    def model_k(x, sigma):
        x = x * denoise_mask + latent_image * latent_mask
        out = model(x, sigma)
        return out * denoise_mask + latent_image * latent_mask
    return model_k


def replay(model, sampler, sigmas, noise, latent_raw, denoise_mask=None):
    """CFGGuider.sample + KSAMPLER.sample: process_in (not for an all-zero latent), noise_scaling,
    KSamplerX0Inpaint under a denoise mask, the sampler, inverse_noise_scaling with the (possibly changed) last
    sigma, process_out (Wan21 or Wan22 by the latent's channels)."""
    latent = latent_raw if torch.count_nonzero(latent_raw) == 0 else process_in(latent_raw)
    if denoise_mask is not None:
        model = x0_inpaint(model, denoise_mask, latent)
    x = sigmas[0] * noise + (1.0 - sigmas[0]) * latent
    x = SAMPLERS[sampler](model, x, sigmas)
    x = x / (1.0 - sigmas[-1])
    return process_out(x)


def reshape_mask(mask, shape):
    """comfy/utils.py reshape_mask (3 latent dims) as sampler_helpers.prepare_mask uses it: trilinear to the
    noise's (T, h, w), channels repeated, then the batch."""
    if mask.ndim < 5:
        mask = mask.reshape((1, 1, -1, mask.shape[-2], mask.shape[-1]))
    mask = TF.interpolate(mask, size=tuple(shape[2:]), mode="trilinear")
    if mask.shape[1] < shape[1]:
        mask = mask.repeat((1, shape[1], 1, 1, 1))[:, :shape[1]]
    return mask.repeat(math.ceil(shape[0] / mask.shape[0]), 1, 1, 1, 1)[:shape[0]]


def fix_empty_latent_channels(transformer, latent_image):
    """comfy/sample.py fix_empty_latent_channels: an all-zero latent gets the model's latent channels."""
    channels = latent_channels(transformer)
    if channels != latent_image.shape[1] and torch.count_nonzero(latent_image) == 0:
        latent_image = latent_image.repeat(1, math.ceil(channels / latent_image.shape[1]), 1, 1, 1)[:, :channels]
    return latent_image


def ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0,
             disable_noise=False, start_step=None, last_step=None, force_full_denoise=False):
    """nodes.py common_ksampler -> comfy/sample.py sample -> samplers.py KSampler.sample: the noise (zeros
    without add_noise), the sigmas cut to [start_step, last_step] (the last set to 0 by force_full_denoise),
    the input latent handed back when start_step is past the end; a LATENT's noise_mask (prepare_mask'ed) goes
    to KSamplerX0Inpaint and the model."""
    assert scheduler == "simple", "not replayed"
    latent_image = fix_empty_latent_channels(model["module"], latent["samples"])
    noise = torch.zeros(latent_image.shape) if disable_noise else comfy_noise(seed, latent_image.shape)
    noise_mask = latent.get("noise_mask")
    denoise_mask = None if noise_mask is None else reshape_mask(noise_mask, noise.shape)
    sigmas = comfy_sigmas(steps, sampler_name, denoise, model["shift"])
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step < len(sigmas) - 1:
            sigmas = sigmas[start_step:]
        else:
            return latent_image
    fn = wan_model(model["module"], positive, negative, cfg, tuple(noise.shape), denoise_mask)
    return replay(fn, sampler_name, sigmas.clone(), noise, latent_image, denoise_mask)


# ---- LoRA ---------------------------------------------------------------------------------------------------

def merge_lora(module, parts: dict, strength: float):
    """comfy/weight_adapter/lora.py: W + strength · (alpha / rank) · up @ down, on a copy of the module.
    `parts` is {original module name: (down, up, alpha)} (tiny_comfy_files.write_lora)."""
    from nodes.wan.checkpoints.original_format import original_key      # the names the files were written with
    if strength == 0 or not parts:
        return module
    module = copy.deepcopy(module)
    sd = module.state_dict()
    names = {original_key(k): k for k in sd}
    with torch.no_grad():
        for name, (down, up, alpha) in parts.items():
            key = names[name + ".weight"]
            sd[key] += (strength * (alpha / down.shape[0])) * torch.mm(up.flatten(1), down.flatten(1)).reshape(
                sd[key].shape)
    module.load_state_dict(sd)
    return module


# ---- a workflow, node by node -------------------------------------------------------------------------------

def _set_values(conditioning, values: dict, append=False):
    """node_helpers.conditioning_set_values: a copy of every entry with the values set (lists appended)."""
    out = []
    for context, options in conditioning:
        options = dict(options)
        for k, v in values.items():
            options[k] = options.get(k, []) + v if append and k in options else v
        out.append([context, options])
    return out


def load_image(path):
    """nodes.py LoadImage: PIL, EXIF orientation, RGB, / 255, batch of one."""
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        image = np.array(ImageOps.exif_transpose(im).convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(image)[None]


def load_video_frames(path):
    """GetVideoComponents of LoadVideo: every frame as rgb24 / 255 and the fps. ComfyUI decodes with PyAV,
    which is not installed here; this reads the file through the ffmpeg binary (imageio_ffmpeg)."""
    import imageio_ffmpeg
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(h, w, 3) for buf in reader]
    return torch.from_numpy(np.stack(frames).astype(np.float32) / 255.0), float(meta["fps"])


def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)


class ComfyReplay:
    """Runs a workflow's nodes in torch as ComfyUI would, on `models` (tiny_comfy_files.ComfyModels) and
    the files of `input_dir`. Evaluation is lazy, as ComfyUI's: a switch's other branch never runs.
    `changes` ({(class_type, input): function(value) -> value}) alter a node's input, to check that a
    comparison notices a real change; `reuse` (an unchanged replay of the same graph) lends the outputs of
    the nodes the changes do not reach."""

    def __init__(self, nodes: dict, models, input_dir, changes=None, reuse: "ComfyReplay | None" = None):
        self.nodes, self.models, self.input_dir = nodes, models, Path(input_dir)
        self.changes = changes or {}
        self.outputs: dict = {}
        if reuse is not None:
            reached = {nid for nid, node in nodes.items()
                       if any(kind == node["class_type"] and key in node["inputs"] for kind, key in self.changes)}
            assert reached, "no node has the changed input"
            while True:
                more = {nid for nid, node in nodes.items() if nid not in reached and any(
                    _is_link(v) and v[0] in reached for v in node["inputs"].values())}
                if not more:
                    break
                reached |= more
            self.outputs = {nid: out for nid, out in reuse.outputs.items() if nid not in reached}

    def output(self, nid: str):
        if nid not in self.outputs:
            node = self.nodes[nid]
            self.outputs[nid] = getattr(self, "node_" + node["class_type"])(node)
        return self.outputs[nid]

    def get(self, node, key, default=None):
        value = node["inputs"].get(key, default)
        if _is_link(value):
            value = self.output(value[0])[value[1]]
        change = self.changes.get((node["class_type"], key))
        return value if change is None else change(value)

    # loaders and inputs
    def node_UNETLoader(self, node):
        return ({"module": self.models.modules[self.get(node, "unet_name")], "shift": 8.0},)  # WAN21_T2V's shift

    def node_LoraLoaderModelOnly(self, node):
        model = self.get(node, "model")
        parts = self.models.modules[self.get(node, "lora_name")]
        return ({**model, "module": merge_lora(model["module"], parts, self.get(node, "strength_model"))},)

    def node_LoraLoader(self, node):
        # the tiny LoRA files (as the real Wan ones) hold no text-encoder part: the CLIP passes through
        return self.node_LoraLoaderModelOnly(node)[0], self.get(node, "clip")

    def node_ModelSamplingSD3(self, node):
        return ({**self.get(node, "model"), "shift": self.get(node, "shift")},)

    def node_CLIPLoader(self, node):
        assert self.get(node, "type") == "wan"
        return ({"encoder": self.models.modules["umt5"], "spiece": self.models.spiece},)

    def node_VAELoader(self, node):
        return (self.models.modules[self.get(node, "vae_name")],)

    def node_CLIPVisionLoader(self, node):
        return (self.models.modules[self.get(node, "clip_name")],)

    def node_LoadImage(self, node):
        return load_image(self.input_dir / self.get(node, "image")), None

    def node_LoadVideo(self, node):
        return (self.input_dir / self.get(node, "file"),)

    def node_GetVideoComponents(self, node):
        frames, fps = load_video_frames(self.get(node, "video"))
        return frames, None, fps

    def node_PrimitiveInt(self, node):
        return (self.get(node, "value"),)

    node_PrimitiveFloat = node_PrimitiveBoolean = node_PrimitiveInt

    def node_ComfySwitchNode(self, node):
        return (self.get(node, "on_true" if self.get(node, "switch") else "on_false"),)

    def node_ComfyMathExpression(self, node):
        values = {k.split(".", 1)[1]: self.get(node, k) for k, v in node["inputs"].items()
                  if k.startswith("values.") and v is not None}
        env = {name: getattr(math, name) for name in ("floor", "ceil", "sqrt")}
        result = eval(node["inputs"]["expression"], {"__builtins__": {}, "min": min, "max": max, "round": round,
                                                     **env}, values)
        return float(result), int(result)

    # encoders
    def node_CLIPTextEncode(self, node):
        clip = self.get(node, "clip")
        return ([[text_embeds(clip["encoder"], clip["spiece"], self.get(node, "text")), {}]],)

    def node_CLIPVisionEncode(self, node):
        states = clip_vision_encode(self.get(node, "clip_vision"), self.get(node, "image"), self.get(node, "crop"))
        return ({"penultimate_hidden_states": states},)

    # comfy_extras/nodes_wan.py
    def node_WanImageToVideo(self, node):
        positive, negative, vae = self.get(node, "positive"), self.get(node, "negative"), self.get(node, "vae")
        width, height, length, batch = (self.get(node, k) for k in ("width", "height", "length", "batch_size"))
        start_image, clip_vision_output = self.get(node, "start_image"), self.get(node, "clip_vision_output")
        latent = torch.zeros([batch, 16, ((length - 1) // 4) + 1, height // 8, width // 8])
        if start_image is not None:
            start_image = upscale_images(start_image[:length], width, height)
            image = torch.ones((length, height, width, start_image.shape[-1])) * 0.5
            image[:start_image.shape[0]] = start_image
            concat_latent_image = vae_encode(vae, image[:, :, :, :3])
            mask = torch.ones((1, 1, latent.shape[2], concat_latent_image.shape[-2], concat_latent_image.shape[-1]))
            mask[:, :, :((start_image.shape[0] - 1) // 4) + 1] = 0.0
            values = {"concat_latent_image": concat_latent_image, "concat_mask": mask}
            positive, negative = _set_values(positive, values), _set_values(negative, values)
        if clip_vision_output is not None:
            values = {"clip_vision_output": clip_vision_output}
            positive, negative = _set_values(positive, values), _set_values(negative, values)
        return positive, negative, {"samples": latent}

    def node_WanFirstLastFrameToVideo(self, node):
        positive, negative, vae = self.get(node, "positive"), self.get(node, "negative"), self.get(node, "vae")
        width, height, length, batch = (self.get(node, k) for k in ("width", "height", "length", "batch_size"))
        start_image, end_image = self.get(node, "start_image"), self.get(node, "end_image")
        cv_start, cv_end = self.get(node, "clip_vision_start_image"), self.get(node, "clip_vision_end_image")
        latent = torch.zeros([batch, 16, ((length - 1) // 4) + 1, height // 8, width // 8])
        if start_image is not None:
            start_image = upscale_images(start_image[:length], width, height)
        if end_image is not None:
            end_image = upscale_images(end_image[-length:], width, height)
        image = torch.ones((length, height, width, 3)) * 0.5
        mask = torch.ones((1, 1, latent.shape[2] * 4, latent.shape[-2], latent.shape[-1]))
        if start_image is not None:
            image[:start_image.shape[0]] = start_image
            mask[:, :, :start_image.shape[0] + 3] = 0.0
        if end_image is not None:
            image[-end_image.shape[0]:] = end_image
            mask[:, :, -end_image.shape[0]:] = 0.0
        concat_latent_image = vae_encode(vae, image[:, :, :, :3])
        mask = mask.view(1, mask.shape[2] // 4, 4, mask.shape[3], mask.shape[4]).transpose(1, 2)
        values = {"concat_latent_image": concat_latent_image, "concat_mask": mask}
        positive, negative = _set_values(positive, values), _set_values(negative, values)
        clip_vision_output = cv_start
        if cv_end is not None:
            if clip_vision_output is not None:
                clip_vision_output = {"penultimate_hidden_states": torch.cat(
                    [cv_start["penultimate_hidden_states"], cv_end["penultimate_hidden_states"]], dim=-2)}
            else:
                clip_vision_output = cv_end
        if clip_vision_output is not None:
            values = {"clip_vision_output": clip_vision_output}
            positive, negative = _set_values(positive, values), _set_values(negative, values)
        return positive, negative, {"samples": latent}

    def node_WanVaceToVideo(self, node):
        positive, negative, vae = self.get(node, "positive"), self.get(node, "negative"), self.get(node, "vae")
        width, height, length, batch = (self.get(node, k) for k in ("width", "height", "length", "batch_size"))
        strength = self.get(node, "strength")
        control_video, control_masks = self.get(node, "control_video"), self.get(node, "control_masks")
        reference_image = self.get(node, "reference_image")
        latent_length = ((length - 1) // 4) + 1
        if control_video is not None:
            control_video = upscale_images(control_video[:length], width, height)
            if control_video.shape[0] < length:
                control_video = TF.pad(control_video, (0, 0, 0, 0, 0, 0, 0, length - control_video.shape[0]),
                                       value=0.5)
        else:
            control_video = torch.ones((length, height, width, 3)) * 0.5
        if reference_image is not None:
            reference_image = upscale_images(reference_image[:1], width, height)
            reference_image = vae_encode(vae, reference_image[:, :, :, :3])
            reference_image = torch.cat([reference_image, process_out(torch.zeros_like(reference_image))], dim=1)
        if control_masks is None:
            mask = torch.ones((length, height, width, 1))
        else:
            mask = control_masks.unsqueeze(1) if control_masks.ndim == 3 else control_masks
            mask = common_upscale(mask[:length], width, height, "bilinear", "center").movedim(1, -1)
            if mask.shape[0] < length:
                mask = TF.pad(mask, (0, 0, 0, 0, 0, 0, 0, length - mask.shape[0]), value=1.0)
        control_video = control_video - 0.5
        inactive = vae_encode(vae, ((control_video * (1 - mask)) + 0.5)[:, :, :, :3])
        reactive = vae_encode(vae, ((control_video * mask) + 0.5)[:, :, :, :3])
        control_video_latent = torch.cat((inactive, reactive), dim=1)
        if reference_image is not None:
            control_video_latent = torch.cat((reference_image, control_video_latent), dim=2)
        stride, height_mask, width_mask = 8, height // 8, width // 8
        mask = mask.view(length, height_mask, stride, width_mask, stride).permute(2, 4, 0, 1, 3)
        mask = mask.reshape(stride * stride, length, height_mask, width_mask)
        mask = TF.interpolate(mask.unsqueeze(0), size=(latent_length, height_mask, width_mask),
                              mode="nearest-exact").squeeze(0)
        trim_latent = 0
        if reference_image is not None:
            mask = torch.cat((torch.zeros_like(mask[:, :reference_image.shape[2]]), mask), dim=1)
            latent_length += reference_image.shape[2]
            trim_latent = reference_image.shape[2]
        mask = mask.unsqueeze(0)
        values = {"vace_frames": [control_video_latent], "vace_mask": [mask], "vace_strength": [strength]}
        positive, negative = _set_values(positive, values, True), _set_values(negative, values, True)
        latent = torch.zeros([batch, 16, latent_length, height // 8, width // 8])
        return positive, negative, {"samples": latent}, trim_latent

    def node_Wan22ImageToVideoLatent(self, node):
        vae, start_image = self.get(node, "vae"), self.get(node, "start_image")
        width, height, length, batch = (self.get(node, k) for k in ("width", "height", "length", "batch_size"))
        latent = torch.zeros([1, 48, ((length - 1) // 4) + 1, height // 16, width // 16])
        if start_image is None:
            return ({"samples": latent},)
        mask = torch.ones([latent.shape[0], 1, ((length - 1) // 4) + 1, latent.shape[-2], latent.shape[-1]])
        start_image = upscale_images(start_image[:length], width, height)
        latent_temp = vae_encode(vae, start_image)
        latent[:, :, :latent_temp.shape[-3]] = latent_temp
        mask[:, :, :latent_temp.shape[-3]] *= 0.0
        latent = process_out(latent) * mask + latent * (1.0 - mask)         # latent_formats.Wan22().process_out
        return ({"samples": latent.repeat((batch,) + (1,) * (latent.ndim - 1)),
                 "noise_mask": mask.repeat((batch,) + (1,) * (mask.ndim - 1))},)

    # comfy_extras/nodes_hunyuan.py
    def node_EmptyHunyuanLatentVideo(self, node):
        width, height, length, batch = (self.get(node, k) for k in ("width", "height", "length", "batch_size"))
        return ({"samples": torch.zeros([batch, 16, ((length - 1) // 4) + 1, height // 8, width // 8])},)

    def node_TrimVideoLatent(self, node):
        samples = self.get(node, "samples")
        return ({**samples, "samples": samples["samples"][:, :, self.get(node, "trim_amount"):]},)

    # sampling and decoding
    def node_KSampler(self, node):
        g = lambda k: self.get(node, k)                                          # noqa: E731
        samples = ksampler(g("model"), g("seed"), g("steps"), g("cfg"), g("sampler_name"), g("scheduler"),
                           g("positive"), g("negative"), g("latent_image"), denoise=g("denoise"))
        return ({**g("latent_image"), "samples": samples},)

    def node_KSamplerAdvanced(self, node):
        g = lambda k: self.get(node, k)                                          # noqa: E731
        samples = ksampler(g("model"), g("noise_seed"), g("steps"), g("cfg"), g("sampler_name"), g("scheduler"),
                           g("positive"), g("negative"), g("latent_image"),
                           disable_noise=g("add_noise") == "disable", start_step=g("start_at_step"),
                           last_step=g("end_at_step"), force_full_denoise=g("return_with_leftover_noise") != "enable")
        return ({**g("latent_image"), "samples": samples},)

    def node_VAEDecode(self, node):
        return (vae_decode(self.get(node, "vae"), self.get(node, "samples")["samples"]),)
