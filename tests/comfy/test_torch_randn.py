"""torch_randn reproduces torch's CPU float32 normal stream bit for bit (torch is the reference)."""
import numpy as np
import pytest
import torch

from nodes.wan.pipelines.torch_randn import TorchCPUGenerator, fma32, prepare_noise, randn

# torch picks the vectorised Box-Muller kernel by CPU capability; the numpy port follows the x86
# AVX2/AVX512 one, which is what ComfyUI on a PC runs.
X86_VECTOR = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
needs_x86 = pytest.mark.skipif(not X86_VECTOR, reason="torch's AVX2/AVX512 normal kernel is not in use here")

SEEDS = [0, 1, 42, 123456789, 2**32 - 1, 2**32 + 5, 2**63 + 11, 0xFFFFFFFFFFFFFFFF]
SHAPES = [(1,), (2,), (7,), (15,), (16,), (17,), (31,), (32,), (33,), (2, 3, 5), (1, 16, 4, 8, 8), (3, 1000)]


def torch_randn(shape, seed):
    torch.manual_seed(seed)
    return torch.randn(shape, dtype=torch.float32, device="cpu").numpy()


def same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.int32), b.view(np.int32))


@needs_x86
@pytest.mark.parametrize("seed", SEEDS)
def test_randn_is_bit_identical_to_torch(seed):
    for shape in SHAPES:
        ours, ref = randn(shape, seed), torch_randn(shape, seed)
        assert same_bits(ours, ref), (seed, shape, np.abs(ours - ref).max())


@needs_x86
def test_a_wan_sized_latent_is_bit_identical():
    # Wan2.1 480p, 81 frames: 16 x 21 x 60 x 104 = 2,096,640 values, not a multiple of 16 away from a tail
    shape = (1, 16, 21, 60, 104)
    assert same_bits(randn(shape, 20250101), torch_randn(shape, 20250101))
    shape = (1, 16, 3, 5, 7)      # 1680 = 105 * 16 and (below) 1679, with a recomputed tail
    assert same_bits(randn(shape, 3), torch_randn(shape, 3))
    assert same_bits(randn((1679,), 3), torch_randn((1679,), 3))


def test_seeds_use_the_low_32_bits_of_the_engine_seed():
    # torch's mt19937 is seeded from seed & 0xffffffff; the generator still reports the full seed
    assert np.array_equal(randn((40,), 5), randn((40,), 2**32 + 5))
    assert not np.array_equal(randn((40,), 5), randn((40,), 6))
    assert TorchCPUGenerator(2**32 + 5).initial_seed() == 2**32 + 5
    with pytest.raises(ValueError):
        TorchCPUGenerator(2**64)      # torch: "Overflow when unpacking long long"


def test_the_engine_is_mt19937_init_genrand():
    # The reference MT19937 (Matsumoto & Nishimura's mt19937ar.c) with init_genrand(5489) starts
    # 3499211612, 581869302, 3890346734 -- the C++ std::mt19937 default seed, independent of torch.
    assert TorchCPUGenerator(5489).random32(3).tolist() == [3499211612, 581869302, 3890346734]


@needs_x86
def test_one_generator_keeps_its_stream_across_calls_and_sizes():
    # Sizes below 16 take torch's scalar float64 path, which caches every second normal on the
    # generator; the vectorised path does not touch that cache. The order must survive mixing both.
    ours = TorchCPUGenerator(9)
    ref = torch.Generator().manual_seed(9)
    for shape in [(3,), (20,), (1,), (5,), (16,), (1,), (1,), (40,), (2, 2)]:
        assert same_bits(ours.randn(shape), torch.randn(shape, generator=ref).numpy()), shape
    ours.manual_seed(9)
    ref.manual_seed(9)            # re-seeding clears the cached normal in both
    assert same_bits(ours.randn((3,)), torch.randn((3,), generator=ref).numpy())


def test_values_are_standard_normal():
    x = randn((200000,), 1).astype(np.float64)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 1) < 0.01


@needs_x86
def test_prepare_noise_matches_comfy_batch_index_semantics():
    # comfy.sample.prepare_noise with noise_inds: one randn([1, ...]) per index 0..max in order on one
    # generator, item k of the result being draw number noise_inds[k].
    shape = (3, 4, 2, 5, 6)
    inds = [2, 0, 2]
    g = torch.manual_seed(77)
    draws = [torch.randn((1,) + shape[1:], generator=g).numpy() for _ in range(3)]
    expected = np.concatenate([draws[i] for i in inds])
    assert same_bits(prepare_noise(shape, 77, batch_index=inds), expected)
    assert same_bits(prepare_noise(shape, 77), torch_randn(shape, 77))


def test_fma32_rounds_once():
    # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: one rounding keeps the 2^-24 tie-break that two roundings lose
    a = np.float32(1 + 2.0 ** -12)
    c = np.float32(-1.0)
    assert fma32(a, a, c) == np.float32(2.0 ** -11 + 2.0 ** -24)
    assert a * a + c == np.float32(2.0 ** -11)
    # the double-rounding trap: a*b + c = 1 + 2^-24 + 2^-70 lies just above a float32 midpoint, but
    # float64 rounds it onto the midpoint and float32 then ties to even (1.0); the true fma is 1 + 2^-23
    a = np.float32(-(2.0 ** -12) * (1 - 2.0 ** -23))
    b = np.float32(2.0 ** -12 * (1 + 2.0 ** -23))
    c = np.float32(1 + 2.0 ** -23)
    assert np.float32(np.float64(a) * np.float64(b) + np.float64(c)) == np.float32(1.0)
    assert fma32(a, b, c) == np.float32(1 + 2.0 ** -23)
