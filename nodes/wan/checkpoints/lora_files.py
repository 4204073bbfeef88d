"""LoRA files in the formats people ship, read onto the Wan transformer's parameter names.

Accepted files (wan_models.md §8): diffusers / PEFT (`transformer.blocks.0.attn1.to_q.lora_A.weight`, with
the PEFT LoraConfig in the safetensors header), original / ComfyUI (`diffusion_model.blocks.0.self_attn.q.
lora_down.weight`, `.alpha`, `.diff_b`, `.diff`, `.diff_m`: Kijai's and LightX2V's step-distillation files) and
kohya / musubi (`lora_unet_blocks_0_self_attn_q.lora_down.weight`).

diffusers (`WanLoraLoaderMixin.load_lora_weights`) is the reference: what it applies we apply the same way,
and what its converter drops (norm deltas, full-weight `.diff`s other than `head.head`'s, `.diff_m`
modulation deltas, bias deltas of layers it does not convert, AccVideo's `time_projection` biases) we skip
too, unless `full_deltas=True`, which adds them as ComfyUI and LightX2V do (`param + strength · delta`).
Every key left out is named, with the reason, in `LoraWeights.skipped`. Where diffusers refuses a file
that is still unambiguous (alphas outside the blocks, kohya keys outside the blocks, a `diff_b` without
its LoRA pair) we apply it as ComfyUI does; DoRA, LoHa and LoKr files are refused.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import numpy as np

from ..models.lora import LoraWeights
from .checkpoint import Checkpoint
from .original_format import original_key
from .safetensors_io import CheckpointError

_PREFIXES = ("base_model.model.", "transformer.", "model.diffusion_model.", "diffusion_model.")
_KOHYA_TOKENS = ("self_attn", "cross_attn", "k_img", "v_img", "norm_k_img", "norm_q", "norm_k", "ffn",
                 "time_projection", "text_embedding", "time_embedding", "img_emb", "emb_pos", "patch_embedding",
                 "head")
_KINDS = [(".lora_A.weight", "A"), (".lora_down.weight", "A"), (".lora_B.weight", "B"), (".lora_up.weight", "B"),
          (".lora_B.bias", "B_bias"), (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff_m", "diff_m"),
          (".diff", "diff")]
_UNSUPPORTED = {"dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", ".hada_": "LoHa", ".lokr_": "LoKr",
                ".lora_mid.": "LoCon (Tucker)"}
METADATA_KEY = "lora_adapter_metadata"     # diffusers' key for the PEFT LoraConfig in the safetensors header

# Modules whose `diff_b` diffusers turns into a PEFT lora_B.bias (our names); any other diff_b it drops.
_DIFF_B_BLOCK = re.compile(r"^(vace_)?blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|attn2\.add_[kv]_proj|"
                           r"ffn\.net\.(0\.proj|2))$")
_DIFF_B_TOP = ("proj_out", "condition_embedder.text_embedder.linear_1", "condition_embedder.text_embedder.linear_2",
               "condition_embedder.time_embedder.linear_1", "condition_embedder.time_embedder.linear_2")
_TIME_PROJ = "condition_embedder.time_proj"
_IMAGE_FF = ("condition_embedder.image_embedder.ff.net.0.proj", "condition_embedder.image_embedder.ff.net.2")


def _kohya_module(name: str) -> str:
    """lora_unet_blocks_0_self_attn_q -> blocks.0.self_attn.q (underscores inside known tokens kept)."""
    rest = name[len("lora_unet_"):]
    protected = {tok: tok.replace("_", "\0") for tok in _KOHYA_TOKENS}
    for tok in sorted(protected, key=len, reverse=True):
        rest = rest.replace(tok, protected[tok])
    return rest.replace("_", ".").replace("\0", "_")


def _split(key: str):
    """(module as written, kind, original-layout file?) of a LoRA key; kind is None when unknown."""
    original = key.startswith(("diffusion_model.", "model.diffusion_model.", "lora_unet_"))
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    for suffix, kind in _KINDS:
        if key.endswith(suffix):
            module = key[:-len(suffix)]
            if module.startswith("lora_unet_"):
                module = _kohya_module(module)
            return module, kind, original
    return key, None, original


class _PeftConfig:
    """The PEFT LoraConfig diffusers saved with the file: per-module rank and alpha, matched as PEFT matches
    them (`LoraModel._create_and_replace`). Which modules get a LoRA is the file's keys, not the config's
    target_modules: diffusers hands PEFT the state dict, and PEFT then injects exactly the modules it names."""

    def __init__(self, cfg: dict, path: Path):
        if cfg.get("use_dora"):
            raise CheckpointError(f"{path}: a DoRA adapter (use_dora in its LoRA config); DoRA is not supported")
        if cfg.get("target_parameters"):
            raise CheckpointError(f"{path}: its LoRA config targets parameters ({cfg['target_parameters']}), "
                                  "which is not supported")
        self.r = cfg.get("r", 8)
        self.alpha = cfg.get("lora_alpha", 8)
        self.rank_pattern = cfg.get("rank_pattern") or {}
        self.alpha_pattern = cfg.get("alpha_pattern") or {}
        self.rslora = bool(cfg.get("use_rslora", False))
        self.lora_bias = bool(cfg.get("lora_bias", False))

    @staticmethod
    def _pattern(patterns: dict, module: str, default):
        for key, value in patterns.items():
            if re.match(rf"(.*\.)?({key})$", module):
                return value
        return default

    def rank(self, module: str) -> int:
        return int(self._pattern(self.rank_pattern, module, self.r))

    def scale(self, module: str) -> float:
        r, alpha = self.rank(module), float(self._pattern(self.alpha_pattern, module, self.alpha))
        return alpha / math.sqrt(r) if self.rslora else alpha / r


def _adapter_config(ckpt: Checkpoint, path: Path) -> dict | None:
    """The transformer's PEFT LoraConfig kwargs from the safetensors header, as diffusers'
    `save_lora_weights(..., transformer_lora_adapter_metadata=...)` (keys prefixed `transformer.`) or
    `WanTransformer3DModel.save_lora_adapter` (unprefixed) write them; None when the file has none."""
    raw = None
    for f in ckpt.files:
        raw = (getattr(f, "metadata", None) or {}).get(METADATA_KEY) or raw
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: its '{METADATA_KEY}' header is not JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: its '{METADATA_KEY}' header is not a JSON object")
    ours = {k[len("transformer."):]: v for k, v in cfg.items() if k.startswith("transformer.")}
    if ours:
        return ours
    return cfg if cfg and not any("." in k for k in cfg) else None     # other components' configs only


def _full_delta_reason(kind: str, module: str) -> str:
    if "norm" in module:
        return "norm delta: diffusers drops norm .diff/.diff_b keys"
    if kind == "diff_m":
        return "modulation delta (.diff_m): diffusers does not apply it"
    if kind == "diff":
        return "full-weight delta (.diff): diffusers applies only head.head's"
    return "bias delta of a layer diffusers does not convert"


def read_lora(path: str | Path, transformer, full_deltas: bool = False) -> LoraWeights:
    """The LoRA file at `path`, mapped onto `transformer`'s parameter names (any accepted format).

    With `full_deltas`, the `.diff` / `.diff_b` / `.diff_m` deltas diffusers leaves out are added too
    (`param + strength · delta`, as ComfyUI and LightX2V do); either way `skipped` names what is not applied."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file not found: {path}")
    ckpt = Checkpoint([path])
    for key in ckpt.keys():
        for marker, what in _UNSUPPORTED.items():
            if marker in key:
                raise CheckpointError(f"{path}: a {what} adapter ('{key}'); only plain LoRA is supported")
    cfg = _adapter_config(ckpt, path)
    peft = _PeftConfig(cfg, path) if cfg is not None else None

    shapes = {n: tuple(p.shape) for n, p in transformer.parameters_and_names()}
    ours = {n.rsplit(".", 1)[0] for n in shapes if n.endswith((".weight", ".bias"))}
    from_original = {}                  # original module or parameter name -> ours
    for n in shapes:
        o = original_key(n)
        from_original[o] = n
        for suffix in (".weight", ".bias"):
            if n.endswith(suffix):
                from_original[o[:-len(suffix)]] = n[:-len(suffix)]

    def module_of(m):
        return m if m in ours else (from_original.get(m) if from_original.get(m) in ours else None)

    parsed = {key: _split(key) for key in ckpt.keys()}
    resolved = {key: module_of(m) for key, (m, kind, _) in parsed.items()}
    # diffusers drops time_projection keys from files without a time_projection weight (AccVideo's biases).
    time_proj_weights = any(resolved[k] == _TIME_PROJ and kind in ("A", "B") for k, (_, kind, _) in parsed.items())
    lora_up = {resolved[k] for k, (_, kind, _) in parsed.items() if kind == "B"}
    head_diff = any(resolved[k] == "proj_out" and kind == "diff" for k, (_, kind, _) in parsed.items())

    lora = LoraWeights(source=str(path))
    alphas, b_bias = {}, {}

    def full_target(module, kind):
        """Our parameter a full delta of `module` (as written) adds to."""
        if kind == "diff_m":
            return from_original.get(module + ".modulation") or \
                (module + ".scale_shift_table" if module + ".scale_shift_table" in shapes else None)
        if kind == "diff_b":
            target = module_of(module)
            return f"{target}.bias" if target and f"{target}.bias" in shapes else None
        target = module_of(module)
        if target and f"{target}.weight" in shapes:
            return f"{target}.weight"
        return module if module in shapes else from_original.get(module)

    for key, (module, kind, original) in parsed.items():
        target = resolved[key]
        if key.startswith(("lora_te", "text_encoder.")):
            lora.skipped[key] = "text-encoder LoRA: only the transformer's are applied"
            continue
        if kind is None:
            lora.skipped[key] = "not a LoRA key"
            continue
        if original and "time_projection" in key and not time_proj_weights:
            if not full_deltas or kind not in ("diff", "diff_b"):
                lora.skipped[key] = "time_projection key in a file without time_projection weights: diffusers drops it"
                continue
        if kind in ("diff", "diff_b", "diff_m"):
            applied_by_diffusers = (kind == "diff" and target == "proj_out") or (
                kind == "diff_b" and target is not None and "norm" not in module and (
                    _DIFF_B_BLOCK.match(target) or target in _DIFF_B_TOP or target == _TIME_PROJ
                    or (target in _IMAGE_FF and target in lora_up)))
            if applied_by_diffusers or full_deltas:
                name = full_target(module, kind)
                if name is None:
                    lora.skipped[key] = "not a parameter of this model"
                    continue
                value = np.asarray(ckpt.get(key), np.float32)
                if value.shape != shapes[name]:
                    raise CheckpointError(f"{path}: '{key}' is {value.shape} but the model's '{name}' is "
                                          f"{shapes[name]}; is this LoRA for another Wan model size?")
                if kind == "diff_b" and applied_by_diffusers:
                    b_bias[name[:-len(".bias")]] = value      # a PEFT lora_B.bias, scaled as one below
                else:
                    lora.full[name] = value
            else:
                lora.skipped[key] = _full_delta_reason(kind, module)
            continue
        if target is None:
            lora.skipped[key] = "not a parameter of this model"
            continue
        if kind in ("A", "B") and head_diff and target == "proj_out":
            lora.skipped[key] = "replaced by head.head.diff, as diffusers does"
            continue
        if kind in ("A", "B", "alpha") and len(shapes.get(f"{target}.weight", ())) != 2:
            lora.skipped[key] = "LoRA on a layer that is not linear: diffusers does not apply it"
            continue
        if kind == "B_bias" and peft is not None and not peft.lora_bias:
            lora.skipped[key] = "lora_B.bias while the file's LoRA config has lora_bias false (PEFT ignores it)"
            continue
        value = np.asarray(ckpt.get(key), np.float32)
        if kind == "A":
            lora.down[target] = value
        elif kind == "B":
            lora.up[target] = value
        elif kind == "alpha":
            alphas[target] = (key, float(value.reshape(-1)[0]))
        else:
            b_bias[target] = value

    unpaired = sorted(set(lora.down) ^ set(lora.up))
    if unpaired:
        raise CheckpointError(f"{path}: LoRA module '{unpaired[0]}' has only one of its down/up (A/B) matrices")
    for module, a in lora.down.items():
        want = shapes[f"{module}.weight"]
        b = lora.up[module]
        if b.shape[1] != a.shape[0]:
            raise CheckpointError(f"{path}: LoRA for '{module}' has rank {a.shape[0]} down and {b.shape[1]} up")
        if (b.shape[0], a.shape[1]) != want:
            raise CheckpointError(f"{path}: LoRA for '{module}' is {b.shape[0]}×{a.shape[1]} but the model's weight "
                                  f"is {want}; is this LoRA for another Wan model size?")
        scale = 1.0
        if module in alphas:
            scale = alphas.pop(module)[1] / a.shape[0]
        if peft is not None:
            if peft.rank(module) != a.shape[0]:
                raise CheckpointError(f"{path}: LoRA for '{module}' has rank {a.shape[0]} but the file's LoRA config "
                                      f"gives it rank {peft.rank(module)}")
            scale *= peft.scale(module)
        lora.scales[module] = scale
    for module, (key, _) in alphas.items():
        lora.skipped[key] = "alpha of a module without a LoRA pair"
    for module, value in b_bias.items():
        lora.bias[module] = value * np.float32(peft.scale(module) if peft is not None else 1.0)
    if not lora.modules():
        first = sorted(ckpt.keys())[:4]
        raise CheckpointError(f"{path} holds no LoRA weights this transformer has (first keys: {first}"
                              + (f"; {len(lora.skipped)} skipped, e.g. {next(iter(lora.skipped.items()))}"
                                 if lora.skipped else "") + ")")
    if lora.skipped:
        warnings.warn(f"{path.name}: {len(lora.skipped)} key(s) not applied (first: "
                      f"{next(iter(lora.skipped))}: {next(iter(lora.skipped.values()))})")
    return lora
