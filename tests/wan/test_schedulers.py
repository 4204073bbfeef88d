"""Our schedulers against diffusers' UniPCMultistepScheduler and
FlowMatchEulerDiscreteScheduler in Wan's configuration."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

import mindspore as ms

from nodes.wan.pipelines.schedulers import FlowMatchEulerScheduler, UniPCFlowScheduler

SHIFTS = [1.0, 3.0, 5.0, 8.0, 12.0, 16.0]
LOOP_TOL = 1e-6   # relative, final latents after a whole loop (fp32)


def ref_unipc(shift):
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=shift, solver_order=2, solver_type="bh2", lower_order_final=True,
                                   final_sigmas_type="zero")


PAIRS = {"unipc": (UniPCFlowScheduler, ref_unipc),
         "euler": (FlowMatchEulerScheduler, lambda s: FlowMatchEulerDiscreteScheduler(shift=s))}


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("shift", SHIFTS)
def test_schedule_equals_diffusers(kind, shift):
    ours_cls, ref_cls = PAIRS[kind]
    for n in range(1, 61):
        ref, ours = ref_cls(shift), ours_cls(shift=shift)
        ref.set_timesteps(n)
        ours.set_timesteps(n)
        assert ours.timesteps.dtype == ref.timesteps.numpy().dtype
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy(), err_msg=f"{kind} n={n} shift={shift}")
        np.testing.assert_allclose(ours.sigmas, ref.sigmas.numpy(), rtol=0, atol=1e-6)


def test_known_wan_timesteps():
    s = UniPCFlowScheduler(shift=3.0)
    s.set_timesteps(50)
    assert list(s.timesteps[:6]) == [999, 993, 986, 979, 971, 964]
    assert list(s.timesteps[-4:]) == [208, 162, 113, 60]
    assert abs(s.sigmas[-2] - 0.0604054) < 1e-6 and s.sigmas[-1] == 0


def test_from_config_reads_the_wan_repo_config():
    cfg = dict(ref_unipc(5.0).config)
    s = UniPCFlowScheduler.from_config(cfg)
    s.set_timesteps(20)
    ref = ref_unipc(5.0)
    ref.set_timesteps(20)
    np.testing.assert_array_equal(s.timesteps, ref.timesteps.numpy())
    with pytest.raises(ValueError, match="flow_prediction"):
        UniPCFlowScheduler.from_config({"prediction_type": "epsilon"})


_A = np.random.default_rng(1).standard_normal((6, 6)).astype(np.float32) * 0.4


def toy_model(x: np.ndarray, t: float) -> np.ndarray:
    """A deterministic stand-in for the transformer, computed in numpy for both sides."""
    return (np.tanh(x @ _A) * (1.0 + float(t) / 1000.0) - 0.3 * x).astype(np.float32)


def run_ours(sched, x, start=0, stop=None):
    stop = len(sched.timesteps) if stop is None else stop
    for i in range(start, stop):
        x = sched.step(ms.Tensor(toy_model(x.asnumpy(), sched.timesteps[i])), x)
    return x


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("steps", [3, 10, 50])
@pytest.mark.parametrize("shift", [3.0, 5.0])
def test_denoise_loop_equals_diffusers(kind, steps, shift):
    ours_cls, ref_cls = PAIRS[kind]
    x0 = np.random.default_rng(steps).standard_normal((2, 3, 6, 6)).astype(np.float32)
    ref = ref_cls(shift)
    ref.set_timesteps(steps)
    xr = torch.from_numpy(x0)
    for t in ref.timesteps:
        xr = ref.step(torch.from_numpy(toy_model(xr.numpy(), float(t))), t, xr).prev_sample
    ours = ours_cls(shift=shift)
    ours.set_timesteps(steps)
    xo = run_ours(ours, ms.Tensor(x0)).asnumpy()
    err = np.abs(xo - xr.numpy()).max() / np.abs(xr.numpy()).max()
    assert err < LOOP_TOL, err


@pytest.mark.parametrize("kind", PAIRS)
@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_resume_from_state_is_bit_identical(kind, k):
    cls = PAIRS[kind][0]
    x0 = ms.Tensor(np.random.default_rng(3).standard_normal((1, 2, 6, 6)).astype(np.float32))
    whole = cls(shift=5.0)
    whole.set_timesteps(10)
    expected = run_ours(whole, x0).asnumpy()
    first = cls(shift=5.0)
    first.set_timesteps(10)
    mid = run_ours(first, x0, 0, k)
    second = cls()
    second.load_state_dict(first.state_dict())
    np.testing.assert_array_equal(run_ours(second, mid, k).asnumpy(), expected)


def test_restart_without_history_differs_for_multistep():
    """A fresh start mid-schedule (ComfyUI-style) is not the same as resuming: the state matters."""
    x0 = ms.Tensor(np.random.default_rng(4).standard_normal((1, 2, 6, 6)).astype(np.float32))
    whole = UniPCFlowScheduler(shift=5.0)
    whole.set_timesteps(10)
    expected = run_ours(whole, x0).asnumpy()
    first = UniPCFlowScheduler(shift=5.0)
    first.set_timesteps(10)
    mid = run_ours(first, x0, 0, 4)
    restarted = UniPCFlowScheduler(shift=5.0)
    restarted.set_timesteps(10)
    restarted.begin(4)
    assert not np.array_equal(run_ours(restarted, mid, 4).asnumpy(), expected)


def test_add_noise_is_the_flow_interpolation():
    s = UniPCFlowScheduler(shift=3.0)
    s.set_timesteps(10)
    x0, n = np.ones((1, 4), np.float32), np.full((1, 4), 2.0, np.float32)
    out = s.add_noise(ms.Tensor(x0), ms.Tensor(n), 3).asnumpy()
    sigma = s.sigmas[3]
    np.testing.assert_allclose(out, (1 - sigma) * x0 + sigma * n, rtol=1e-6)


def test_stepping_past_the_end_is_an_error():
    s = FlowMatchEulerScheduler()
    s.set_timesteps(1)
    x = ms.Tensor(np.zeros((1, 2), np.float32))
    s.step(x, x)
    with pytest.raises(RuntimeError, match="finished"):
        s.step(x, x)
