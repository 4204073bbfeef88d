"""MagCache's per-step magnitude ratios: the published tables for the public Wan checkpoints,
picking one for a model, resampling to a step count, and calibrating a new one.

A ratio is gamma_t = mean over tokens of ||r_t|| / ||r_(t-1)||, r_t the residual the transformer's
blocks add at step t (their output tokens minus their input tokens): column 0 for the conditional
pass, column 1 for the unconditional one. MagCache (Ma et al. 2025, arXiv:2506.09045) finds this
curve a property of model and schedule, nearly the same for every prompt and seed, so one reference
sampling serves all later runs; `step_cache_calibration.calibrate` runs that sampling for a model the
table lacks (or at settings far from the published ones: a table is resampled to any step count,
nothing else adapts).

The published values are data from github.com/Zehong-Ma/MagCache at commit df81cb1 (2025-11-17):
MagCache4Wan2.1/magcache_generate.py and MagCache4Wan2.2/magcache_generate.py, measured with
Wan-Video's reference code and UniPC at the settings in `PRESETS`. They are interleaved
(cond, uncond) per step from the second step on, as published; the first step has no predecessor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCE = "github.com/Zehong-Ma/MagCache@df81cb1"

_PUBLISHED = {
    "wan2.1_t2v_1.3b": (
        1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685, 0.99567, 0.99586,
        0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506, 0.99535, 0.99531, 0.99552, 0.99549,
        0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485, 0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479,
        0.99415, 0.99413, 0.99419, 0.99416, 0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304,
        0.9927, 0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005, 0.99003,
        0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504, 0.98503, 0.9836, 0.98359,
        0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741, 0.97411, 0.97003, 0.97002, 0.96538, 0.96541,
        0.9593, 0.95933, 0.95086, 0.95089, 0.94013, 0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868,
        0.81838, 0.81939
    ),
    "wan2.1_t2v_14b": (
        1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658, 0.99482, 0.99476,
        0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545, 0.99468, 0.99465, 0.99438, 0.99434,
        0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401, 0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426,
        0.99347, 0.99343, 0.99418, 0.99416, 0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215,
        0.99216, 0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887, 0.98866,
        0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376, 0.98177, 0.98173,
        0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183, 0.96711, 0.96708, 0.96349, 0.96345,
        0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961, 0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945,
        0.86111, 0.86189
    ),
    "wan2.1_i2v_14b_480p": (
        0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878, 0.98762, 0.98759,
        0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886, 0.99065, 0.99068, 0.98845, 0.98847,
        0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861, 0.98823, 0.98823, 0.98756, 0.98759, 0.98808, 0.98814,
        0.98721, 0.98724, 0.98571, 0.98572, 0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413, 0.97952, 0.97953,
        0.98149, 0.9815, 0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087, 0.97056, 0.97055,
        0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973, 0.93988, 0.93217, 0.93224,
        0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616
    ),
    "wan2.1_i2v_14b_720p": (
        0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917, 0.98646, 0.98652,
        0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103, 0.99215, 0.99212, 0.99515, 0.99515,
        0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097, 0.99166, 0.99169, 0.99041, 0.99042, 0.99201, 0.99198,
        0.99101, 0.99101, 0.98599, 0.98603, 0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857, 0.98718, 0.98719,
        0.98497, 0.98497, 0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536, 0.97498, 0.97499,
        0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649, 0.94655, 0.93397, 0.93414,
        0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768
    ),
    "wan2.2_t2v_a14b": (
        1.00124, 1.00155, 0.99822, 0.99851, 0.99696, 0.99687, 0.99703, 0.99732, 0.9966, 0.99679, 0.99602, 0.99658,
        0.99578, 0.99664, 0.99484, 0.9949, 0.99633, 0.996, 0.99659, 0.99683, 0.99534, 0.99549, 0.99584, 0.99577,
        0.99681, 0.99694, 0.99563, 0.99554, 0.9944, 0.99473, 0.99594, 0.9964, 0.99466, 0.99461, 0.99453, 0.99481,
        0.99389, 0.99365, 0.99391, 0.99406, 0.99354, 0.99361, 0.99283, 0.99278, 0.99268, 0.99263, 0.99057, 0.99091,
        0.99125, 0.99126, 0.65523, 0.65252, 0.98808, 0.98852, 0.98765, 0.98736, 0.9851, 0.98535, 0.98311, 0.98339,
        0.9805, 0.9806, 0.97776, 0.97771, 0.97278, 0.97286, 0.96731, 0.96728, 0.95857, 0.95855, 0.94385, 0.94385,
        0.92118, 0.921, 0.88108, 0.88076, 0.80263, 0.80181
    ),
    "wan2.2_ti2v_5b_t2v": (
        0.99505, 0.99389, 0.99441, 0.9957, 0.99558, 0.99551, 0.99499, 0.9945, 0.99534, 0.99548, 0.99468, 0.9946,
        0.99463, 0.99458, 0.9946, 0.99453, 0.99408, 0.99404, 0.9945, 0.99441, 0.99409, 0.99398, 0.99403, 0.99397,
        0.99382, 0.99377, 0.99349, 0.99343, 0.99377, 0.99378, 0.9933, 0.99328, 0.99303, 0.99301, 0.99217, 0.99216,
        0.992, 0.99201, 0.99201, 0.99202, 0.99133, 0.99132, 0.99112, 0.9911, 0.99155, 0.99155, 0.98958, 0.98957,
        0.98959, 0.98958, 0.98838, 0.98835, 0.98826, 0.98825, 0.9883, 0.98828, 0.98711, 0.98709, 0.98562, 0.98561,
        0.98511, 0.9851, 0.98414, 0.98412, 0.98284, 0.98282, 0.98104, 0.98101, 0.97981, 0.97979, 0.97849, 0.97849,
        0.97557, 0.97554, 0.97398, 0.97395, 0.97171, 0.97166, 0.96917, 0.96913, 0.96511, 0.96507, 0.96263, 0.96257,
        0.95839, 0.95835, 0.95483, 0.95475, 0.94942, 0.94936, 0.9468, 0.94678, 0.94583, 0.94594, 0.94843, 0.94872,
        0.96949, 0.97015
    ),
    "wan2.2_ti2v_5b_i2v": (
        0.99512, 0.99559, 0.99559, 0.99561, 0.99595, 0.99577, 0.99512, 0.99512, 0.99546, 0.99534, 0.99543, 0.99531,
        0.99496, 0.99491, 0.99504, 0.99499, 0.99444, 0.99449, 0.99481, 0.99481, 0.99435, 0.99435, 0.9943, 0.99431,
        0.99411, 0.99406, 0.99373, 0.99376, 0.99413, 0.99405, 0.99363, 0.99359, 0.99335, 0.99331, 0.99244, 0.99243,
        0.99229, 0.99229, 0.99239, 0.99236, 0.99163, 0.9916, 0.99149, 0.99151, 0.99191, 0.99192, 0.9898, 0.98981,
        0.9899, 0.98987, 0.98849, 0.98849, 0.98846, 0.98846, 0.98861, 0.98861, 0.9874, 0.98738, 0.98588, 0.98589,
        0.98539, 0.98534, 0.98444, 0.98439, 0.9831, 0.98309, 0.98119, 0.98118, 0.98001, 0.98, 0.97862, 0.97859,
        0.97555, 0.97558, 0.97392, 0.97388, 0.97152, 0.97145, 0.96871, 0.9687, 0.96435, 0.96434, 0.96129, 0.96127,
        0.95639, 0.95638, 0.95176, 0.95175, 0.94446, 0.94452, 0.93972, 0.93974, 0.93575, 0.9359, 0.93537, 0.93552,
        0.96655, 0.96616
    ),
    "wan2.2_i2v_a14b": (
        0.99191, 0.99144, 0.99356, 0.99337, 0.99326, 0.99285, 0.99251, 0.99264, 0.99393, 0.99366, 0.9943, 0.9943,
        0.99276, 0.99288, 0.99389, 0.99393, 0.99274, 0.99289, 0.99316, 0.9931, 0.99379, 0.99377, 0.99268, 0.99271,
        0.99222, 0.99227, 0.99175, 0.9916, 0.91076, 0.91046, 0.98931, 0.98933, 0.99087, 0.99088, 0.98852, 0.98855,
        0.98895, 0.98896, 0.98806, 0.98808, 0.9871, 0.98711, 0.98613, 0.98618, 0.98434, 0.98435, 0.983, 0.98307,
        0.98185, 0.98187, 0.98131, 0.98131, 0.9783, 0.97835, 0.97619, 0.9762, 0.97264, 0.9727, 0.97088, 0.97098,
        0.96568, 0.9658, 0.96045, 0.96055, 0.95322, 0.95335, 0.94579, 0.94594, 0.93297, 0.93311, 0.91699, 0.9172,
        0.89174, 0.89202, 0.8541, 0.85446, 0.79823, 0.79902
    ),
}


@dataclass(frozen=True)
class Preset:
    """Where a published table comes from, and how `preset_for` recognises a model it fits."""
    checkpoint: str
    steps: int
    shift: float
    size: str
    dim: int                       # hidden size (heads x head dim)
    layers: int
    in_channels: int
    two_experts: bool = False
    name_hint: str | None = None   # the 480P and 720P I2V checkpoints share one architecture
    first_frame: bool | None = None   # TI2V-5B: separate tables for text-only and image-conditioned runs
    experts: tuple | None = None   # experts whose steps may be skipped (None: all)


PRESETS = {
    "wan2.1_t2v_1.3b": Preset("Wan-AI/Wan2.1-T2V-1.3B", 50, 5.0, "832*480", 1536, 30, 16),
    "wan2.1_t2v_14b": Preset("Wan-AI/Wan2.1-T2V-14B", 50, 5.0, "1280*720", 5120, 40, 16),
    "wan2.1_i2v_14b_480p": Preset("Wan-AI/Wan2.1-I2V-14B-480P", 40, 3.0, "832*480", 5120, 40, 36, name_hint="480p"),
    "wan2.1_i2v_14b_720p": Preset("Wan-AI/Wan2.1-I2V-14B-720P", 40, 5.0, "1280*720", 5120, 40, 36, name_hint="720p"),
    "wan2.2_t2v_a14b": Preset("Wan-AI/Wan2.2-T2V-A14B", 40, 12.0, "832*480", 5120, 40, 16, two_experts=True),
    # The source never skips the high-noise expert of the I2V model: only its low-noise steps.
    "wan2.2_i2v_a14b": Preset("Wan-AI/Wan2.2-I2V-A14B", 40, 5.0, "832*480", 5120, 40, 36, two_experts=True,
                              experts=(1,)),
    "wan2.2_ti2v_5b_t2v": Preset("Wan-AI/Wan2.2-TI2V-5B", 50, 5.0, "1280*704", 3072, 30, 48, first_frame=False),
    "wan2.2_ti2v_5b_i2v": Preset("Wan-AI/Wan2.2-TI2V-5B", 50, 5.0, "1280*704", 3072, 30, 48, first_frame=True),
}


def published_table(name: str) -> np.ndarray:
    """[steps, 2] ratios (cond, uncond) of a published table; the first step's are 1."""
    values = np.asarray(_PUBLISHED[name], np.float64).reshape(-1, 2)
    return np.concatenate([np.ones((1, 2)), values])


def resample(table: np.ndarray, steps: int) -> np.ndarray:
    """`table` [n, columns] at `steps` rows by nearest neighbour, as MagCache adapts a curve measured
    at one step count to another."""
    table = np.asarray(table, np.float64)
    n = table.shape[0]
    if n == steps:
        return table
    if steps == 1:
        return table[-1:]
    return table[np.round(np.arange(steps) * ((n - 1) / (steps - 1))).astype(int)]


def preset_for(denoiser, first_frame: bool = False) -> str | None:
    """The published table for this model, or None when none fits (or the model is ambiguous)."""
    cfg = denoiser.config
    dim = int(cfg.get("num_attention_heads", 0)) * int(cfg.get("attention_head_dim", 0))
    two = denoiser.transformer_2 is not None
    name = (denoiser.name or "").lower()
    if cfg.get("pos_embed_seq_len") is not None or cfg.get("vace_layers"):   # FLF2V, VACE: no published table
        return None
    for key, p in PRESETS.items():
        if (dim, int(cfg.get("num_layers", 0)), int(cfg.get("in_channels", 0)), two) != (
                p.dim, p.layers, p.in_channels, p.two_experts):
            continue
        if p.name_hint is not None and p.name_hint not in name:
            continue
        if p.first_frame is not None and p.first_frame != bool(first_frame):
            continue
        return key
    return None


def preset_ratios(name: str) -> dict:
    """A published table as a MAG_RATIOS value."""
    if name not in PRESETS:
        raise ValueError(f"unknown MagCache ratio preset {name!r}; choose one of {sorted(PRESETS)}")
    p = PRESETS[name]
    return {"ratios": published_table(name), "experts": None if p.experts is None else list(p.experts),
            "source": f"{name}: {p.checkpoint}, {p.steps} UniPC steps, shift {p.shift}, {p.size} ({SOURCE})"}

