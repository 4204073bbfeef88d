"""The `comfy` node pack: ComfyUI's core node classes for Wan, so ComfyUI's own workflows run unchanged.

Registered by `comfy_pack` (entry point `graphrt.nodes: comfy`). Each node has ComfyUI's class name,
input names, types, defaults, widget order and output types, and adapts `nodes.wan`.

Value conventions (what flows along each socket type):

- MODEL: a `nodes.wan.models.denoiser.WanDenoiser` holding one transformer (each Wan2.2 A14B
  expert is its own MODEL, as in ComfyUI). ComfyUI samples every Wan model as a discrete flow
  with shift 8; UNETLoader sets `scheduler_config["flow_shift"] = 8.0` so our WanDenoise agrees,
  and ModelSamplingSD3 (comfy_sampler_nodes) records its shift in `scheduler_config` through
  `model.with_`. LoRA nodes swap `transformer` for a LoRA view sharing the base weights.
- CLIP: a `WanTextEncoder` (UMT5 encoder + tokenizer; the tokenizer read from the file's
  `spiece_model` tensor). CLIPTextEncode encodes as ComfyUI does (`pipelines/comfy_text.py`):
  weights syntax, EOS, zero padding to at least 512 rows, rows past the prompt zeroed.
- CONDITIONING: a `WanConditioning`, the representation our Wan nodes and both samplers (WanDenoise,
  the ComfyUI samplers) feed the transformer with: `embeds` [1, ≥512, D]; `image_embeds` the CLIP
  vision penultimate states ([1, 257, 1280]; FLF2V's two images as two rows); `extras` with
  CONCAT_LATENTS (ComfyUI's `concat_cond` output: inverted mask ×4 + normalised image latent),
  VACE_CONTROL / VACE_STRENGTH (ComfyUI's `vace_context`). ComfyUI keeps raw latents in the
  conditioning and builds these when it samples; the conditioning nodes here build them at once
  (`nodes.wan.pipelines.comfy_conditioning` explains each step and what differs).
- LATENT: `{"samples": ms.Tensor [B, C, T, H, W], "normalized": False}`: raw VAE latents, as
  ComfyUI keeps them (the model applies the Wan2.1 / Wan2.2 mean and std). Optional keys:
  "noise_mask" [B, 1, T, h, w] (1 = denoise; Wan22ImageToVideoLatent), "empty": True for an
  all-zero starting latent. A LATENT marked "normalized": True (our Wan nodes) is converted
  by `nodes.wan.pipelines.latent_space.raw_samples` wherever these nodes read one.
- IMAGE float32 [N, H, W, 3] in 0..1 (video frames along N); MASK float32 [N, H, W].
- CLIP_VISION: a `WanCLIPVision`; CLIP_VISION_OUTPUT: its penultimate hidden states, a tensor
  [N, tokens, D] (ComfyUI's `.penultimate_hidden_states`; the only part Wan uses).
- VIDEO: `nodes.wan.video_clip.VideoClip` (frames, fps, audio or None). AUDIO: ComfyUI's dict.

File-name inputs (model files, input-folder files) are STRING widgets listed in each node's
`FOLDER_INPUTS` (see `comfy_files`); a missing file is a validation error naming the folders
searched and the files present.
"""
