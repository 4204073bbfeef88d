"""PyTorch's CPU normal stream in numpy: `torch.manual_seed(s); torch.randn(shape)` without torch.

ComfyUI draws every initial latent noise on the CPU generator (`comfy.sample.prepare_noise`), and
its ancestral samplers draw their per-step noise from a CPU generator too when they run on the CPU.
Reproducing that stream is what makes a seed mean the same video here as in ComfyUI.

How torch produces it (ATen `CPUGeneratorImpl`, `DistributionsHelper.h`,
`native/cpu/DistributionTemplates.h`, `native/cpu/avx_mathfun.h`):

* the engine is MT19937 seeded with Matsumoto-Nishimura `init_genrand` from the low 32 bits of the
  64-bit seed (so seeds 5 and 2**32 + 5 give the same stream);
* float32 tensors of 16 or more contiguous elements take the vectorised Box-Muller path: one uniform
  per element, `(word & 0xFFFFFF) * 2**-24`, then each block of 16 maps u[0:8] (radius, via 1 - u)
  and u[8:16] (angle) to 16 normals; a tail shorter than 16 is handled by drawing 16 fresh
  uniforms and recomputing the last 16 outputs. On x86 with AVX2/AVX512 the log, sin and cos are the
  Cephes polynomials of `avx_mathfun.h`, evaluated in float32 -- reproduced here operation by
  operation so the result is bit-identical, not just close;
* fewer than 16 elements take the scalar path: float64 Box-Muller from two 53-bit uniforms, returning
  r*cos and keeping r*sin for the next scalar draw (the cache lives on the generator and is cleared by
  `manual_seed`).

`DEFAULT` CPU builds (e.g. ARM, or ATEN_CPU_CAPABILITY=default) use the compiler's float log/sin/cos
on the vectorised path instead; ``vector_math="libm"`` approximates those (about 1.5% of values differ,
by at most 3-4 ulp). The AVX2 stream is the default because that is what ComfyUI on x86 draws.
"""
from __future__ import annotations

import math

import numpy as np

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1


# ---- the float32 Cephes kernels of avx_mathfun.h (log256_ps, sincos256_ps) -------------------------
# Every step is a float32 operation in the same order as the C code. PyTorch's AVX2 kernels are built
# with FMA enabled, and the compiler fuses a multiply feeding an add into one fused multiply-add
# (one rounding instead of two); the fusions below are the ones that make the output bit-identical
# to torch's (checked against torch on AVX2 and AVX512 CPUs: a plain mul-then-add version is 1 ulp
# off in about 1% of elements).

_f = np.float32
_LOG_P = [_f(c) for c in (7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1,
                          1.4249322787E-1, -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1,
                          3.3333331174E-1)]
_LOG_Q1, _LOG_Q2 = _f(-2.12194440e-4), _f(0.693359375)
_SQRTHF = _f(0.707106781186547524)
_DP = [_f(-0.78515625), _f(-2.4187564849853515625e-4), _f(-3.77489497744594108e-8)]
_SINCOF = [_f(-1.9515295891E-4), _f(8.3321608736E-3), _f(-1.6666654611E-1)]
_COSCOF = [_f(2.443315711809948E-005), _f(-1.388731625493765E-003), _f(4.166664568298827E-002)]
_FOPI = _f(1.27323954473516)
_ONE, _HALF, _ZERO = _f(1.0), _f(0.5), _f(0.0)


def fma32(a, b, c) -> np.ndarray:
    """float32 fused multiply-add a*b + c, correctly rounded once.

    a*b is exact in float64 (24+24 bits), so rounding p + c to float64 and then to float32 is right
    unless the float64 sum landed exactly on a float32 rounding midpoint (or in float32's subnormal
    range); only those rare elements are redone with round-to-odd (TwoSum gives the exact error, and
    an inexact sum with an even last bit is nudged one ulp toward it), which makes the final rounding
    to float32 exact -- no double rounding.
    """
    p = np.multiply(a, b, dtype=np.float64)
    s = p + np.asarray(c, dtype=np.float64)
    out = np.asarray(s.astype(np.float32))
    bits = s.view(np.int64)
    suspect = ((bits & 0x1FFFFFFF) == 0x10000000) | (np.abs(s) < 2.0 ** -126)
    if suspect.any():
        p, c64, s, out = np.broadcast_arrays(p, np.asarray(c, dtype=np.float64), s, out)
        out = out.copy()
        ps, cs, ss = p[suspect], c64[suspect], s[suspect]
        t = ss - ps
        err = (ps - (ss - t)) + (cs - t)
        even = (ss.view(np.int64) & 1) == 0
        ss = np.where((err != 0) & even, np.nextafter(ss, np.copysign(np.inf, err)), ss)
        out[suspect] = ss.astype(np.float32)
    return out


def _cephes_logf(x: np.ndarray) -> np.ndarray:
    """log256_ps for x in (0, 1] (Box-Muller's 1 - u never reaches 0 or a denormal)."""
    bits = x.view(np.int32)
    e = ((bits >> 23) - 0x7F).astype(np.float32) + _ONE
    m = ((bits & ~0x7F800000) | 0x3F000000).view(np.float32)      # mantissa scaled into [0.5, 1)
    small = m < _SQRTHF
    # if m < sqrt(1/2): e -= 1, m = 2m - 1 else m = m - 1, computed as (m - 1) + (m if small else 0)
    e = e - np.where(small, _ONE, _ZERO)
    m = (m - _ONE) + np.where(small, m, _ZERO)
    z = m * m
    y = _LOG_P[0]
    for c in _LOG_P[1:]:
        y = fma32(y, m, c)
    y = y * m
    y = fma32(y, z, e * _LOG_Q1)
    y = y - z * _HALF                           # z * 0.5 is exact, fused or not
    return fma32(e, _LOG_Q2, m + y)


def _cephes_sincosf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sincos256_ps for x >= 0 (Box-Muller's angle 2*pi*u is never negative)."""
    j = (x * _FOPI).astype(np.int32)            # cvttps: truncation
    j = (j + 1) & ~1
    y = j.astype(np.float32)
    sin_negate = (j & 4) != 0
    use_sin_poly = (j & 2) == 0                 # the sine's polynomial choice; the cosine's is the other
    cos_negate = ((j - 2) & 4) == 0
    # Cody-Waite reduction by pi/4 split into three parts
    r = fma32(y, _DP[2], fma32(y, _DP[1], fma32(y, _DP[0], x)))
    z = r * r
    pc = fma32(fma32(_COSCOF[0], z, _COSCOF[1]), z, _COSCOF[2]) * z
    pc = fma32(pc, z, -(z * _HALF)) + _ONE
    ps = fma32(fma32(_SINCOF[0], z, _SINCOF[1]), z, _SINCOF[2]) * z
    ps = fma32(ps, r, r)
    s = np.where(use_sin_poly, ps, pc)
    c = np.where(use_sin_poly, pc, ps)
    return np.where(sin_negate, -s, s), np.where(cos_negate, -c, c)


def _box_muller16(u: np.ndarray, vector_math: str) -> np.ndarray:
    """Blocks of 16 uniforms (shape [k, 16], float32) -> 16 normals each, as normal_fill_16 does."""
    u1 = _ONE - u[:, :8]
    u2 = u[:, 8:]
    theta = _f(2.0 * math.pi) * u2
    if vector_math == "avx2":
        radius = np.sqrt(_f(-2.0) * _cephes_logf(u1))
        sin_t, cos_t = _cephes_sincosf(theta)
    else:   # the portable template: float log/cos/sin from libm, approximated by rounded float64 values
        radius = np.sqrt(_f(-2.0) * np.log(u1.astype(np.float64)).astype(np.float32))
        theta = 2.0 * math.pi * u2.astype(np.float64)          # 2.0f * pi<double> * u2, in double ...
        theta = theta.astype(np.float32).astype(np.float64)    # ... stored as float
        sin_t, cos_t = np.sin(theta).astype(np.float32), np.cos(theta).astype(np.float32)
    return np.concatenate([radius * cos_t, radius * sin_t], axis=1)


class TorchCPUGenerator:
    """A `torch.Generator()` on the CPU, for `randn` in float32 only.

    >>> g = TorchCPUGenerator(42)   # torch.manual_seed(42)
    >>> x = g.randn((1, 16, 21, 60, 104))
    """

    def __init__(self, seed: int = 67280421310721, *, vector_math: str = "avx2"):
        if vector_math not in ("avx2", "libm"):
            raise ValueError(f"vector_math must be 'avx2' or 'libm', got {vector_math!r}")
        self.vector_math = vector_math
        self._bits = np.random.MT19937(0)
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> "TorchCPUGenerator":
        seed = int(seed)
        # torch takes any value that fits int64 or uint64; negatives wrap to uint64.
        if not -(1 << 63) <= seed <= _MASK64:
            raise ValueError(f"seed {seed} does not fit 64 bits (torch: 'Overflow when unpacking long long')")
        self._seed = seed & _MASK64
        # numpy's legacy seeding of a 32-bit integer is Matsumoto-Nishimura init_genrand, the
        # recurrence key[i] = 1812433253 * (key[i-1] ^ (key[i-1] >> 30)) + i that torch runs too
        # (RandomState(seed) is the public, slower road to the same state).
        seed32 = self._seed & _MASK32
        if hasattr(self._bits, "_legacy_seeding"):
            self._bits._legacy_seeding(seed32)
        else:
            self._bits.state = {"bit_generator": "MT19937",
                                "state": {"key": np.random.RandomState(seed32).get_state()[1], "pos": 624}}
        self._cached_normal = None      # torch's next_double_normal_sample
        return self

    def initial_seed(self) -> int:
        return self._seed

    def random32(self, n: int) -> np.ndarray:
        """The next n raw 32-bit engine outputs (torch `generator->random()`)."""
        return self._bits.random_raw(n).astype(np.uint32)

    def _uniform_float(self, n: int) -> np.ndarray:
        # uniform_real_distribution<float>: 24 random bits scaled by 2**-24 (exact in float32).
        return (self.random32(n) & np.uint32(0xFFFFFF)).astype(np.float32) * _f(2.0 ** -24)

    def _uniform_double(self) -> float:
        hi, lo = (int(w) for w in self.random32(2))
        return (((hi << 32) | lo) & ((1 << 53) - 1)) * 2.0 ** -53

    def _scalar_normal(self) -> float:
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        u1 = self._uniform_double()
        u2 = self._uniform_double()
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._cached_normal = r * math.sin(theta)
        return r * math.cos(theta)

    def randn(self, shape) -> np.ndarray:
        """`torch.randn(shape, dtype=torch.float32, generator=self)` on the CPU."""
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        n = math.prod(shape)
        if n < 16:
            return np.array([self._scalar_normal() for _ in range(n)], dtype=np.float64) \
                .astype(np.float32).reshape(shape)
        u = self._uniform_float(n)
        full = n // 16 * 16
        out = np.empty(n, dtype=np.float32)
        out[:full] = _box_muller16(u[:full].reshape(-1, 16), self.vector_math).reshape(-1)
        if n % 16:
            # torch refills the last 16 slots with fresh uniforms and recomputes them
            out[n - 16:] = _box_muller16(self._uniform_float(16).reshape(1, 16), self.vector_math)[0]
        return out.reshape(shape)


def randn(shape, seed: int, *, vector_math: str = "avx2") -> np.ndarray:
    """`torch.manual_seed(seed); torch.randn(shape)` (float32, CPU)."""
    return TorchCPUGenerator(seed, vector_math=vector_math).randn(shape)


def prepare_noise(shape, seed: int, batch_index=None, *, vector_math: str = "avx2") -> np.ndarray:
    """ComfyUI's `comfy.sample.prepare_noise` for a latent of `shape` (batch first).

    Without `batch_index` the whole batch is one randn call. With it (a latent's "batch_index",
    e.g. after LatentFromBatch), noise is drawn one batch item at a time for items 0..max(index) in
    order, and item k of the result is draw number batch_index[k] -- so a latent split out of a batch
    gets the noise it had inside the batch.
    """
    shape = tuple(int(s) for s in shape)
    gen = TorchCPUGenerator(seed, vector_math=vector_math)
    if batch_index is None:
        return gen.randn(shape)
    inds = [int(i) for i in np.asarray(batch_index).reshape(-1)]
    draws = [gen.randn((1,) + shape[1:]) for _ in range(max(inds) + 1)]
    return np.concatenate([draws[i] for i in inds], axis=0)
