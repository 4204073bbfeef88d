"""The output cache's disk tier: what it writes survives a new process, damaged entries are never
served, values without a codec are never written, and the budget spills to disk."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from graphrt.cache import OutputCache
from graphrt.disk_cache import DiskTier, register_codec


@dataclass
class Embeds:          # stands in for a node pack's own value type
    rows: np.ndarray
    label: str


register_codec(Embeds, "test.Embeds", lambda e: {"rows": e.rows, "label": e.label},
               lambda d: Embeds(d["rows"], d["label"]))

OUTPUTS = ({"samples": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "empty": False},
           Embeds(np.ones((3, 2), np.float16), "fox"), [1, 2.5, "x", None], 7)


def _same(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys() and all(_same(a[k], b[k]) is None for k in a)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b) and all(_same(x, y) is None for x, y in zip(a, b))
    elif isinstance(a, Embeds):
        _same(a.rows, b.rows), _same(a.label, b.label)
    else:
        assert a == b


def test_round_trip_keeps_types_dtypes_and_values(tmp_path):
    tier = DiskTier(tmp_path)
    assert tier.put("ab12", OUTPUTS)
    _same(tier.get("ab12"), OUTPUTS)
    assert not list(tmp_path.rglob(".partial-*"))


def test_an_entry_survives_a_new_process(tmp_path):
    DiskTier(tmp_path).put("cd34", OUTPUTS)
    code = ("import sys, numpy as np; sys.path.insert(0, 'tests/engine');"
            "from graphrt.disk_cache import DiskTier; import test_disk_cache as t;"
            f"v = DiskTier({str(tmp_path)!r}).get('cd34'); t._same(v, t.OUTPUTS); print('same')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(
        __import__("pathlib").Path(__file__).resolve().parents[2]))
    assert out.stdout.strip() == "same", out.stderr


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_entry_is_refused_and_removed(tmp_path, damage):
    tier = DiskTier(tmp_path)
    tier.put("ef56", OUTPUTS)
    path = tier.path("ef56")
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 40]
    else:
        data[-5] ^= 0xFF          # a tensor byte: the header still parses, the digest does not match
    path.write_bytes(bytes(data))
    assert tier.get("ef56") is None
    assert not path.exists()


def test_values_without_a_codec_are_not_written(tmp_path):
    tier = DiskTier(tmp_path)
    assert not tier.put("0001", (object(),))
    assert not list(tmp_path.rglob("*.safetensors"))


def test_the_cache_serves_from_disk_after_a_restart_and_spills_the_budget(tmp_path):
    cache = OutputCache("last-run", disk=DiskTier(tmp_path))
    cache.begin_run()
    cache.put("aa01", OUTPUTS, persist=True)
    cache.put("aa02", (np.zeros(3),))              # not asked to persist: memory only
    fresh = OutputCache("last-run", disk=DiskTier(tmp_path))
    assert "aa01" in fresh and "aa02" not in fresh
    _same(fresh.get("aa01"), OUTPUTS)
    small = OutputCache("budget:200B", disk=DiskTier(tmp_path / "b"))
    small.begin_run()
    small.put("bb01", (np.zeros(40, np.float32),))   # 160 bytes
    small.put("bb02", (np.ones(40, np.float32),))    # evicts bb01 from memory, onto disk
    assert "bb01" not in small.entries and "bb01" in small
    assert np.array_equal(small.get("bb01")[0], np.zeros(40, np.float32))


def test_the_tier_stays_under_its_size(tmp_path):
    tier = DiskTier(tmp_path, max_bytes=3000)
    for i in range(6):
        tier.put(f"c{i:03d}", (np.full(200, i, np.float32),))   # ~900 bytes each with the header
    files = list(tmp_path.rglob("*.safetensors"))
    assert 0 < len(files) < 6 and sum(f.stat().st_size for f in files) <= 3000
    assert "c005" in tier                                        # the newest stays


# --- through the executor: a restart re-runs only what changed, and never what a cached node spares

from graphrt import Executor, Input, Node, Output, Workflow, register_node  # noqa: E402

CALLS = {"load": 0, "encode": 0}


@register_node
class _SlowLoad(Node):
    CATEGORY = "test"
    INPUTS = [Input("name", "STRING", default="m")]
    OUTPUTS = [Output("model", "TOYMODEL")]

    def execute(self, ctx, name):
        CALLS["load"] += 1
        return (object(),)            # a model: no codec, never on disk


@register_node
class _Encode(Node):
    CATEGORY = "test"
    DISK_CACHE = True
    INPUTS = [Input("model", "TOYMODEL"), Input("text", "STRING", default="")]
    OUTPUTS = [Output("embeds", "EMB")]

    def execute(self, ctx, model, text):
        CALLS["encode"] += 1
        return (np.full(4, len(text), np.float32),)


@register_node
class _Use(Node):
    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = [Input("embeds", "EMB"), Input("seed", "INT", default=0)]
    OUTPUTS = [Output("value", "FLOAT")]

    def execute(self, ctx, embeds, seed):
        return (float(embeds.sum()) + seed,)


def _wf(seed):
    return Workflow.from_dict({"1": {"class_type": "_SlowLoad", "inputs": {"name": "m"}},
                               "2": {"class_type": "_Encode", "inputs": {"model": ["1", 0], "text": "abc"}},
                               "3": {"class_type": "_Use", "inputs": {"embeds": ["2", 0], "seed": seed}}})


def test_a_restart_with_a_new_seed_neither_loads_nor_encodes(tmp_path):
    CALLS.update(load=0, encode=0)
    first = Executor(cache_dir=tmp_path).run(_wf(0))
    assert first.outputs["3"]["value"] == 12.0 and CALLS == {"load": 1, "encode": 1}
    again = Executor(cache_dir=tmp_path).run(_wf(5))          # a new process would do the same
    assert again.outputs["3"]["value"] == 17.0
    assert CALLS == {"load": 1, "encode": 1}, "the encoder was loaded or run again"
    assert again.report["2"].status == "cached" and again.report["1"].status == "not_run"


def test_a_damaged_entry_makes_the_run_compute_it_again(tmp_path):
    CALLS.update(load=0, encode=0)
    Executor(cache_dir=tmp_path).run(_wf(0))
    for f in tmp_path.rglob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:-8])
    result = Executor(cache_dir=tmp_path).run(_wf(1))
    assert result.outputs["3"]["value"] == 13.0 and CALLS == {"load": 2, "encode": 2}
