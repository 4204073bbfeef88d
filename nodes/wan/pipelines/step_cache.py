"""Step caching: skip the transformer's blocks on denoising steps where their output barely changes.

Two policies, each deterministic (decisions depend only on the settings, the step and the
tensors of this run) and off unless asked for:

- `magcache` (MagCache, Ma et al. 2025): the blocks add a residual r_t to the tokens. Its norm
  changes from step to step by a ratio gamma_t that is a property of model and schedule
  (`mag_ratios`), so the error of reusing r from k steps back is estimated before the step, from
  the table alone: the product of the ratios since then accumulates, and |1 - product| is summed
  over the skipped streak. A step reuses the last residual (tokens + r, no block runs) while that
  sum stays under `threshold` and at most `max_skips` steps in a row were skipped.
- `first_block` (ParaAttention's First Block Cache, as diffusers' FirstBlockCacheConfig): the first
  block always runs; when its residual differs from the one of the last fully computed step by less
  than `threshold` (mean |difference| / mean |previous|), the other blocks are skipped and the
  residual they added at that step is reused.

Shared rules: the first `retention` fraction of each expert's steps always runs (the early steps
shape the video); an expert switch (Wan2.2 A14B) starts afresh, since the other expert's residuals
say nothing about this one's; CFG's passes are decided together (one decision per step; for
`first_block` from the conditional rows, so batching the passes or not decides the same); a
threshold of 0 or `max_skips` 0 never skips. The state travels in the sampler state, so split
stages skip exactly as one run does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import mindspore as ms
from mindspore import mint

from .mag_ratios import PRESETS, preset_for, preset_ratios, resample

MODES = ("off", "magcache", "first_block")
COND, UNCOND = "cond", "uncond"   # CFG's passes ("tracks"); each keeps its own residual


@dataclass(frozen=True, eq=False)
class StepCache:
    """The STEP_CACHE value: which policy and its settings.

    `ratios` (magcache): a MAG_RATIOS value, {"ratios": [n, columns], "experts": experts that may
    skip or None, "source": text}; None takes the published table for the model (`preset`,
    "auto" = recognised from the model's architecture and name)."""
    mode: str = "off"
    threshold: float = 0.12
    max_skips: int = 2
    retention: float = 0.2
    ratios: dict | None = None
    preset: str = "auto"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown step cache mode {self.mode!r}; choose one of {MODES}")
        if self.threshold < 0 or self.max_skips < 0 or not 0 <= self.retention <= 1:
            raise ValueError("threshold and max_skips must be >= 0 and retention within [0, 1]")
        if self.preset != "auto" and self.preset not in PRESETS:
            raise ValueError(f"unknown MagCache ratio preset {self.preset!r}; choose auto or one of {sorted(PRESETS)}")

    @property
    def active(self) -> bool:
        return self.mode != "off"

    def cache_nbytes(self) -> int:
        return 0 if self.ratios is None else int(np.asarray(self.ratios["ratios"]).nbytes)


@dataclass
class Streak:
    """What the decisions remember since the last fully computed step."""
    ratio: list = field(default_factory=list)   # magcache: product of the ratios, per table column
    err: list = field(default_factory=list)     # magcache: accumulated |1 - product|, per column
    skips: int = 0                              # steps skipped in a row

    def reset(self) -> None:
        self.ratio, self.err, self.skips = [], [], 0

    def copy(self) -> "Streak":
        return Streak(list(self.ratio), list(self.err), self.skips)


def magcache_skips(streak: Streak, ratios_row, threshold: float, max_skips: int) -> bool:
    """MagCache's rule for one step (with a residual to reuse): skip while the error accumulated over
    the streak stays under `threshold` in every column and at most `max_skips` steps run skipped;
    otherwise compute and restart the streak."""
    ratio = [(streak.ratio[c] if streak.ratio else 1.0) * float(g) for c, g in enumerate(ratios_row)]
    err = [(streak.err[c] if streak.err else 0.0) + abs(1.0 - r) for c, r in enumerate(ratio)]
    if all(e < threshold for e in err) and streak.skips + 1 <= max_skips:
        streak.ratio, streak.err, streak.skips = ratio, err, streak.skips + 1
        return True
    streak.reset()
    return False


def first_block_skips(streak: Streak, change: float, threshold: float, max_skips: int) -> bool:
    """First Block Cache's rule: skip the other blocks when the first block's residual changed by
    less than `threshold` (relative) since the last computed step, at most `max_skips` in a row."""
    if change < threshold and streak.skips + 1 <= max_skips:
        streak.skips += 1
        return True
    streak.reset()
    return False


def relative_change(now: ms.Tensor, before: ms.Tensor) -> float:
    """mean |now - before| / mean |before| (diffusers' FirstBlockCache measure), in float32."""
    now, before = now.astype(ms.float32), before.astype(ms.float32)
    den = float(mint.abs(before).mean().asnumpy())
    return float(mint.abs(now - before).mean().asnumpy()) / den if den > 0 else float("inf")


def _row_norms(r: ms.Tensor) -> np.ndarray:
    a = r.astype(ms.float32).asnumpy().astype(np.float64)
    return np.sqrt((a * a).sum(-1))


@dataclass
class CacheState:
    """The cache between steps, and between chained stages (inside `SamplerState`)."""
    mode: str
    expert: int | None = None                     # the expert of the last step
    residual: dict = field(default_factory=dict)  # track -> residual to reuse (magcache: all blocks';
                                                  # first_block: the blocks after the first)
    first: ms.Tensor | None = None                # first_block: cond rows' first-block residual, last computed step
    streak: Streak = field(default_factory=Streak)

    def copy(self) -> "CacheState":
        """A copy to continue from: tensors are replaced, never written, so they are shared."""
        return CacheState(self.mode, self.expert, dict(self.residual), self.first, self.streak.copy())

    def clear(self) -> None:
        self.residual, self.first = {}, None
        self.streak.reset()

    def nbytes(self) -> int:
        tensors = list(self.residual.values()) + ([self.first] if self.first is not None else [])
        return sum(int(t.nbytes) for t in tensors)


class StepCacheSession:
    """One denoising run's use of a `StepCache` (or, with `record`, of none: every step runs and the
    magnitude ratios are measured, see `step_cache_calibration`).

    The denoise loop calls `begin` once, `begin_step(i)` before each step, and passes
    `blocks_hook(tracks)` to each transformer call (`tracks`: the CFG passes in its batch, in row
    order); `snapshot()` is the state to hand on, `stats()` what was skipped."""

    def __init__(self, config: StepCache | None = None, record: bool = False):
        self.config = config or StepCache()
        if record and self.config.active:
            raise ValueError("calibration measures an uncached run: record with the step cache off")
        self.record = record
        self.state = CacheState(self.config.mode)
        self.evaluations = self.skipped = self.blocks_run = self.blocks_total = 0
        self.skipped_steps: list[int] = []
        self.ratios_source = ""

    # -- set-up -------------------------------------------------------------------------------
    def begin(self, denoiser, steps: int, experts: list, cfg: bool, positive=None, carried: CacheState | None = None,
              first_frame: bool | None = None):
        """`experts`: the expert index of every step of the schedule; `carried`: the state a previous
        stage stopped with (used when it ran the same mode); `first_frame`: whether a start frame is
        given (TI2V's published ratios differ), when not told by `positive`'s extras."""
        self.first_frame = first_frame
        self.steps, self.experts = int(steps), list(experts)
        self.tracks = (COND, UNCOND) if cfg else (COND,)
        self.table, self.may_skip_expert = None, None
        if self.config.mode == "magcache":
            ratios = self.config.ratios or self._preset(denoiser, positive)
            self.table = resample(np.asarray(ratios["ratios"], np.float64), self.steps)
            self.may_skip_expert = ratios.get("experts")
            self.ratios_source = str(ratios.get("source", ""))
        if carried is not None and carried.mode == self.config.mode:
            self.state = carried.copy()
        if self.record:
            self._recorded = np.full((self.steps, len(self.tracks)), np.nan)

    def _preset(self, denoiser, positive) -> dict:
        from .conditioning import FIRST_FRAME_MASK
        name = self.config.preset
        if name == "auto":
            first_frame = self.first_frame or (positive is not None and FIRST_FRAME_MASK in positive.extras)
            name = preset_for(denoiser, first_frame)
            if name is None:
                raise ValueError(
                    f"no published MagCache ratios fit this model ({denoiser.name or 'unnamed'}): calibrate them "
                    f"once (WanStepCacheCalibrate -> WanStepCache's `ratios`) or pick a preset "
                    f"({', '.join(sorted(PRESETS))})")
        return preset_ratios(name)

    def _segment(self, i: int) -> tuple[int, int]:
        """(first step, length) of the run of steps on step i's expert."""
        e, start, stop = self.experts[i], i, i
        while start > 0 and self.experts[start - 1] == e:
            start -= 1
        while stop < len(self.experts) and self.experts[stop] == e:
            stop += 1
        return start, stop - start

    # -- per step -----------------------------------------------------------------------------
    def begin_step(self, i: int) -> None:
        st, cfg = self.state, self.config
        expert = self.experts[i]
        if st.expert is not None and st.expert != expert:
            st.clear()
        st.expert = expert
        self.step = i
        start, length = self._segment(i)
        retained = i - start < int(cfg.retention * length + 0.5)
        allowed = self.may_skip_expert is None or expert in self.may_skip_expert
        self.may_skip = cfg.active and not retained and allowed
        self.skip = False
        if cfg.mode == "magcache":
            ready = all(t in st.residual for t in self.tracks)
            if self.may_skip and ready:
                self.skip = magcache_skips(st.streak, self.table[i], cfg.threshold, cfg.max_skips)
            else:
                st.streak.reset()
        elif cfg.mode == "first_block":
            self.skip = None       # decided by the step's first transformer call

    def blocks_hook(self, tracks: tuple):
        """The `blocks_hook` for a transformer call whose batch holds `tracks` (equal row counts):
        hook(tokens, run, n_blocks) -> tokens after the blocks, `run(x, start, stop)` running blocks
        [start, stop)."""
        if not (self.config.active or self.record):
            return None
        if self.config.mode == "first_block":
            return lambda x, run, n: self._first_block(tracks, x, run, n)
        return lambda x, run, n: self._whole(tracks, x, run, n)

    def _whole(self, tracks, x, run, n):
        st = self.state
        if self.skip and all(t in st.residual for t in tracks):
            self._count(tracks, n, 0)
            return x + self._stacked(tracks)
        y = run(x, 0, None)
        self._count(tracks, n, n)
        self._keep(tracks, y - x)
        return y

    def _first_block(self, tracks, x, run, n):
        st, cfg = self.state, self.config
        h = run(x, 0, 1)
        if self.skip is None:
            # CFG's passes are decided together, from the conditional rows (first in every call)
            r0 = (h - x)[:x.shape[0] // len(tracks)]
            if self.may_skip and st.first is not None and all(t in st.residual for t in self.tracks):
                self.skip = first_block_skips(st.streak, relative_change(r0, st.first), cfg.threshold,
                                              cfg.max_skips)
            else:
                self.skip = False
                st.streak.reset()
            if not self.skip:
                st.first = r0          # compared against until the next computed step, as diffusers does
        if self.skip and all(t in st.residual for t in tracks):
            self._count(tracks, n, 1)
            return h + self._stacked(tracks)
        y = run(h, 1, None)
        self._count(tracks, n, n)
        self._keep(tracks, y - h)
        return y

    # -- residual bookkeeping -----------------------------------------------------------------
    def _stacked(self, tracks):
        parts = [self.state.residual[t] for t in tracks]
        return parts[0] if len(parts) == 1 else mint.cat(parts)

    def _keep(self, tracks, residual):
        rows = residual.shape[0] // len(tracks)
        for k, t in enumerate(tracks):
            r = residual if len(tracks) == 1 else residual[k * rows:(k + 1) * rows]
            if self.record:
                before = self.state.residual.get(t)
                ratio = 1.0 if before is None else float(np.mean(_row_norms(r) / _row_norms(before)))
                self._recorded[self.step, self.tracks.index(t)] = ratio
            self.state.residual[t] = r

    def _count(self, tracks, n_blocks, ran):
        k = len(tracks)
        self.evaluations += k
        self.blocks_total += k * n_blocks
        self.blocks_run += k * ran
        if ran < n_blocks:
            self.skipped += k
            if not self.skipped_steps or self.skipped_steps[-1] != self.step:
                self.skipped_steps.append(self.step)

    # -- results ------------------------------------------------------------------------------
    def snapshot(self) -> CacheState:
        return self.state.copy()

    def stats(self) -> dict:
        """For the run report: transformer evaluations (one per CFG pass) and how many skipped blocks."""
        c = self.config
        out = {"mode": c.mode, "threshold": c.threshold, "max_skips": c.max_skips, "retention": c.retention,
               "evaluations": self.evaluations, "skipped": self.skipped, "skipped_steps": list(self.skipped_steps),
               "blocks_run": self.blocks_run, "blocks_total": self.blocks_total}
        if self.ratios_source:
            out["ratios"] = self.ratios_source
        return out

    def recorded_ratios(self) -> np.ndarray:
        """record: the measured ratios [steps, tracks] (NaN for steps not run)."""
        return self._recorded.copy()
