"""Flow-matching schedulers for Wan, identical to diffusers' in Wan's configuration.

- `UniPCFlowScheduler`: UniPCMultistepScheduler with `use_flow_sigmas`,
  `prediction_type="flow_prediction"` (what every Wan `-Diffusers` repo ships).
- `FlowMatchEulerScheduler`: FlowMatchEulerDiscreteScheduler.

The schedule and every per-step coefficient are computed in numpy with the
same float32 roundings diffusers' torch code makes (MindSpore's CPU log/exp
are less precise, mindspore_cpu.md §7); only the latent updates run on
MindSpore tensors. Both keep their whole state in plain attributes so a run
can stop after any step and a new scheduler continue it exactly
(`state_dict` / `load_state_dict`).
"""
from __future__ import annotations

import numpy as np
import mindspore as ms

f32 = np.float32


def _shift(sigmas, shift: float):
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class _FlowScheduler:
    def begin(self, step_index: int = 0) -> None:
        """Start (or restart, without history) at `step_index`."""
        if not 0 <= step_index <= len(self.timesteps):
            raise ValueError(f"step index {step_index} is outside the {len(self.timesteps)}-step schedule")
        self._reset_history()
        self.step_index = int(step_index)

    def add_noise(self, x0: ms.Tensor, noise: ms.Tensor, step_index: int) -> ms.Tensor:
        """The flow interpolation (1 - σ)·x0 + σ·noise at `step_index`."""
        sigma = self.sigmas[step_index]
        return float(f32(1) - sigma) * x0 + float(sigma) * noise

    def _check_ready(self):
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps before step")
        if self.step_index >= len(self.timesteps):
            raise RuntimeError(f"the {len(self.timesteps)}-step schedule is already finished")


class UniPCFlowScheduler(_FlowScheduler):
    """UniPC (predictor UniP + corrector UniC, B(h) variants) on flow sigmas."""

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 3.0, solver_order: int = 2,
                 solver_type: str = "bh2", lower_order_final: bool = True, disable_corrector=(),
                 final_sigmas_type: str = "zero"):
        if solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min', got {final_sigmas_type!r}")
        if solver_order < 1:
            raise ValueError(f"solver_order must be >= 1, got {solver_order}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.solver_order = int(solver_order)
        self.solver_type = solver_type
        self.lower_order_final = bool(lower_order_final)
        self.disable_corrector = list(disable_corrector or [])
        self.final_sigmas_type = final_sigmas_type
        self.timesteps = None
        self.sigmas = None
        self.step_index = 0
        self._reset_history()

    @classmethod
    def from_config(cls, config: dict) -> "UniPCFlowScheduler":
        """From a diffusers `scheduler_config.json` (a UniPC one; other keys are ignored)."""
        config = config or {}
        if config.get("prediction_type", "flow_prediction") != "flow_prediction" or \
                not config.get("use_flow_sigmas", True):
            raise ValueError("Wan's UniPC runs with prediction_type='flow_prediction' and use_flow_sigmas=True; "
                             f"this scheduler config has {config.get('prediction_type')!r}, "
                             f"use_flow_sigmas={config.get('use_flow_sigmas')!r}")
        return cls(num_train_timesteps=config.get("num_train_timesteps", 1000),
                   shift=config.get("flow_shift", 3.0) or 3.0,
                   solver_order=config.get("solver_order", 2), solver_type=config.get("solver_type", "bh2"),
                   lower_order_final=config.get("lower_order_final", True),
                   disable_corrector=config.get("disable_corrector", ()),
                   final_sigmas_type=config.get("final_sigmas_type", "zero"))

    def _reset_history(self):
        self.model_outputs = [None] * self.solver_order
        self.lower_order_nums = 0
        self.last_sample = None
        self.this_order = 1

    def set_timesteps(self, num_steps: int, shift: float | None = None) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if shift is not None:
            self.shift = float(shift)
        sig = np.linspace(1, 1 / self.num_train_timesteps, num_steps + 1)[:-1]
        sig = _shift(sig, self.shift)
        if abs(sig[0] - 1) < 1e-6:  # keeps log(alpha) finite, as diffusers does
            sig[0] -= 1e-6
        self.timesteps = (sig * self.num_train_timesteps).astype(np.int64)
        last = 0.0 if self.final_sigmas_type == "zero" else sig[-1]
        self.sigmas = np.concatenate([sig, [last]]).astype(f32)
        self.step_index = 0
        self._reset_history()

    # -- coefficients (float32 scalars, as torch computes them) --------------------------------
    def _lambda(self, i: int):
        s = self.sigmas[i]
        with np.errstate(divide="ignore"):
            return f32(np.log(f32(1) - s)) - f32(np.log(s))

    def _coeffs(self, t_idx: int, s0_idx: int, prev_idx: list[int], order: int, corrector: bool):
        """alpha_t, sigma_t/sigma_s0, h_phi_1, B_h, rks, rhos for one UniP/UniC update."""
        sigma_t, sigma_s0 = self.sigmas[t_idx], self.sigmas[s0_idx]
        alpha_t = f32(1) - sigma_t
        lam_t, lam_s0 = self._lambda(t_idx), self._lambda(s0_idx)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            h = f32(lam_t - lam_s0)
            rks = [f32((self._lambda(si) - lam_s0) / h) for si in prev_idx] + [f32(1)]
            hh = f32(-h)
            h_phi_1 = f32(np.expm1(hh))
            h_phi_k = f32(h_phi_1 / hh - f32(1))
            b_h = hh if self.solver_type == "bh1" else f32(np.expm1(hh))
            fact = 1
            R, b = [], []
            for i in range(1, order + 1):
                R.append([f32(r ** (i - 1)) for r in rks])
                b.append(f32(h_phi_k * fact / b_h))
                fact *= i + 1
                h_phi_k = f32(h_phi_k / hh - f32(1) / fact)
        if corrector:
            rhos = [f32(0.5)] if order == 1 else list(np.linalg.solve(np.array(R, f32), np.array(b, f32)).astype(f32))
        elif order == 2:
            rhos = [f32(0.5)]
        elif order > 2:
            rhos = list(np.linalg.solve(np.array(R, f32)[:-1, :-1], np.array(b, f32)[:-1]).astype(f32))
        else:
            rhos = []
        ratio = f32(sigma_t / sigma_s0)
        return alpha_t, ratio, h_phi_1, b_h, rks[:-1], rhos

    def _update(self, x, m0, prev_models, coeffs, this_model=None):
        alpha_t, ratio, h_phi_1, b_h, rks, rhos = coeffs
        out = float(ratio) * x - float(f32(alpha_t * h_phi_1)) * m0
        d1s = [(mi - m0) / float(rk) for mi, rk in zip(prev_models, rks)]
        res = None
        n = len(d1s)
        for rho, d1 in zip(rhos[:n], d1s):
            term = float(rho) * d1
            res = term if res is None else res + term
        if this_model is not None:  # corrector: the new model output enters with the last rho
            term = float(rhos[-1]) * (this_model - m0)
            res = term if res is None else res + term
        if res is None:
            return out
        return out - float(f32(alpha_t * b_h)) * res

    def step(self, model_output: ms.Tensor, sample: ms.Tensor) -> ms.Tensor:
        """One UniPC step from the current step index; returns the next sample."""
        self._check_ready()
        i = self.step_index
        sample = sample.astype(ms.float32)
        x0 = sample - float(self.sigmas[i]) * model_output.astype(ms.float32)
        if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
            order = self.this_order
            prev = [self.model_outputs[-(k + 1)] for k in range(1, order)]
            coeffs = self._coeffs(i, i - 1, [i - (k + 1) for k in range(1, order)], order, corrector=True)
            sample = self._update(self.last_sample, self.model_outputs[-1], prev, coeffs, this_model=x0)
        self.model_outputs = self.model_outputs[1:] + [x0]
        order = min(self.solver_order, len(self.timesteps) - i) if self.lower_order_final else self.solver_order
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        prev = [self.model_outputs[-(k + 1)] for k in range(1, self.this_order)]
        coeffs = self._coeffs(i + 1, i, [i - k for k in range(1, self.this_order)], self.this_order, corrector=False)
        new = self._update(sample, x0, prev, coeffs)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        self.step_index = i + 1
        return new

    def state_dict(self) -> dict:
        return {"kind": "unipc", "num_train_timesteps": self.num_train_timesteps, "shift": self.shift,
                "solver_order": self.solver_order, "solver_type": self.solver_type,
                "lower_order_final": self.lower_order_final, "disable_corrector": list(self.disable_corrector),
                "final_sigmas_type": self.final_sigmas_type,
                "timesteps": None if self.timesteps is None else self.timesteps.copy(),
                "sigmas": None if self.sigmas is None else self.sigmas.copy(),
                "step_index": self.step_index, "model_outputs": list(self.model_outputs),
                "lower_order_nums": self.lower_order_nums, "last_sample": self.last_sample,
                "this_order": self.this_order}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "unipc":
            raise ValueError(f"not a UniPC scheduler state (kind={state.get('kind')!r})")
        for k, v in state.items():
            if k != "kind":
                setattr(self, k, list(v) if k in ("model_outputs", "disable_corrector") else v)


class FlowMatchEulerScheduler(_FlowScheduler):
    """First-order flow-matching Euler: x ← x + (σ_next − σ)·v."""

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 3.0):
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.timesteps = None
        self.sigmas = None
        self.step_index = 0

    @classmethod
    def from_config(cls, config: dict) -> "FlowMatchEulerScheduler":
        config = config or {}
        return cls(num_train_timesteps=config.get("num_train_timesteps", 1000),
                   shift=config.get("shift", config.get("flow_shift", 3.0)) or 3.0)

    def _reset_history(self):
        pass

    def set_timesteps(self, num_steps: int, shift: float | None = None) -> None:
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        if shift is not None:
            self.shift = float(shift)
        n = self.num_train_timesteps
        # The training grid is shifted once in float32 (its ends bound the schedule),
        # and the inference grid is shifted again, as diffusers does.
        train = np.linspace(1, n, n, dtype=f32)[::-1] / f32(n)
        train = (f32(self.shift) * train / (f32(1) + f32(self.shift - 1) * train)).astype(f32)
        sigma_max, sigma_min = float(train[0]), float(train[-1])
        t = np.linspace(sigma_max * n, sigma_min * n, num_steps)
        sig = _shift(t / n, self.shift).astype(f32)
        self.timesteps = (sig * f32(n)).astype(f32)
        self.sigmas = np.concatenate([sig, [f32(0)]]).astype(f32)
        self.step_index = 0

    def step(self, model_output: ms.Tensor, sample: ms.Tensor) -> ms.Tensor:
        self._check_ready()
        i = self.step_index
        dt = f32(self.sigmas[i + 1] - self.sigmas[i])
        self.step_index = i + 1
        return sample.astype(ms.float32) + float(dt) * model_output.astype(ms.float32)

    def state_dict(self) -> dict:
        return {"kind": "euler", "num_train_timesteps": self.num_train_timesteps, "shift": self.shift,
                "timesteps": None if self.timesteps is None else self.timesteps.copy(),
                "sigmas": None if self.sigmas is None else self.sigmas.copy(), "step_index": self.step_index}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "euler":
            raise ValueError(f"not an Euler scheduler state (kind={state.get('kind')!r})")
        for k, v in state.items():
            if k != "kind":
                setattr(self, k, v)
