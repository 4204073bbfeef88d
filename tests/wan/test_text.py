"""UMT5 encoder, tokenizer and prompt encoding against transformers / diffusers."""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from transformers import T5TokenizerFast, UMT5Config
from transformers import UMT5EncoderModel as RefUMT5

from nodes.wan import load_text_encoder, load_tokenizer
from nodes.wan.checkpoints.presets import _write_tokenizer
from nodes.wan.pipelines.prompt import clean_prompt, encode_prompt
from nodes.wan.models.tokenizer import WanTokenizer
from nodes.wan.models.umt5 import relative_buckets
from tests.wan.parity import rel_err

TOL = 1e-5   # relative, fp32 (measured ~5e-7)
TRICKY = ["a red fox running in the snow", "  leading and trailing   spaces  ", "tabs\tand\nnewlines\r\nhere",
          "accents: café naïve Ångström", "CJK 東京タワー 北京", "emoji 🦊🎥✨", "", "x" * 700,
          "punctuation!?... (brackets) [x] {y} 'quotes' \"double\"", "&amp; html &lt;b&gt; entities"]


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """A preset-style tokenizer.json and one trained here with the tokenizers library,
    each wrapped by transformers' T5TokenizerFast and saved."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    root = tmp_path_factory.mktemp("tok")
    preset = root / "preset"
    _write_tokenizer(preset)
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = ["a red fox runs in the snow at night", "the quick brown fox jumps over the lazy dog",
              "café naïve Ångström 東京 北京 🦊 video camera motion"] * 30
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"],
                                                            unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    trained = root / "trained"
    trained.mkdir()
    tok.save(str(trained / "tokenizer.json"))
    out = {}
    for name, folder in (("preset", preset), ("trained", trained)):
        ref = T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), pad_token="<pad>", eos_token="</s>",
                              unk_token="<unk>", extra_ids=0)
        saved = root / f"{name}-saved"
        ref.save_pretrained(saved)
        out[name] = (ref, saved)
    return out


@pytest.mark.parametrize("name", ["preset", "trained"])
@pytest.mark.parametrize("max_length", [16, 64])
def test_tokenizer_matches_transformers(tokenizer_dirs, name, max_length):
    ref, folder = tokenizer_dirs[name]
    ours = load_tokenizer(folder, subfolder=None)
    got = ours(TRICKY, max_length=max_length)
    want = ref(TRICKY, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
               return_attention_mask=True)
    np.testing.assert_array_equal(got.input_ids, np.array(want["input_ids"]))
    np.testing.assert_array_equal(got["attention_mask"], np.array(want["attention_mask"]))
    assert got.input_ids.dtype == np.int64 and got.input_ids.shape == (len(TRICKY), max_length)


def test_tokenizer_truncation_keeps_eos_and_empty_prompt_is_eos(tokenizer_dirs):
    ours = load_tokenizer(tokenizer_dirs["preset"][1], subfolder=None)
    out = ours(["a " * 100, ""], max_length=8)
    assert out.input_ids[0, -1] == 1 and out.attention_mask[0].sum() == 8
    assert list(out.input_ids[1]) == [1] + [0] * 7 and out.attention_mask[1].sum() == 1


def test_sentencepiece_fallback(tmp_path):
    import sentencepiece as spm
    corpus = ["a red fox runs in the snow", "the quick brown fox jumps over the lazy dog", "café 東京 video"] * 40
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_prefix=str(tmp_path / "spiece"),
                                   vocab_size=60, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    ours = WanTokenizer.from_pretrained(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    for text in ["a red fox", "the lazy dog runs", ""]:
        ids = sp.encode(text) + [1]
        out = ours(text, max_length=64)
        assert list(out.input_ids[0, :len(ids)]) == ids and out.attention_mask[0].sum() == len(ids)
    assert ours("fox " * 50, max_length=5).input_ids[0, -1] == 1


def test_missing_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor spiece.model"):
        WanTokenizer.from_pretrained(tmp_path)


def test_relative_buckets_match_transformers():
    from transformers.models.umt5.modeling_umt5 import UMT5Attention
    cfg = UMT5Config(d_model=8, d_kv=4, num_heads=2, relative_attention_num_buckets=32,
                     relative_attention_max_distance=128)
    attn = UMT5Attention(cfg, has_relative_attention_bias=True)
    n = 600
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    np.testing.assert_array_equal(relative_buckets(n, n, 32, 128), attn._relative_position_bucket(rel).numpy())


@pytest.fixture(scope="module")
def umt5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("umt5")
    torch.manual_seed(0)
    ref = RefUMT5(UMT5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                             relative_attention_num_buckets=32, relative_attention_max_distance=128)).eval()
    ref.save_pretrained(folder)
    return ref, load_text_encoder(folder, subfolder=None)


def test_umt5_last_hidden_state_with_padding(umt5):
    ref, ours = umt5
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 120, (3, 70))
    mask = np.ones_like(ids)
    mask[1, 45:] = 0
    ids[1, 45:] = 0
    mask[2, 1:] = 0
    ids[2, 1:] = 0
    with torch.no_grad():
        want = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
    got = ours(ids, mask).asnumpy()
    assert rel_err(got, want) < TOL


def test_encode_prompt_matches_diffusers(umt5, tokenizer_dirs):
    from diffusers import WanPipeline
    ref_model, ours_model = umt5
    ref_tok, folder = tokenizer_dirs["trained"]
    prompts = ["a red fox running in the snow", "", "  café   &amp;  東京 🦊 ", "the dog " * 40]
    fake = types.SimpleNamespace(tokenizer=ref_tok, text_encoder=ref_model, _execution_device=torch.device("cpu"))
    with torch.no_grad():
        want = WanPipeline._get_t5_prompt_embeds(fake, prompt=prompts, max_sequence_length=64,
                                                 device=torch.device("cpu"), dtype=torch.float32).numpy()
    got = encode_prompt(ours_model, load_tokenizer(folder, subfolder=None), prompts, max_length=64).asnumpy()
    assert got.shape == want.shape == (4, 64, 32)
    assert rel_err(got, want) < TOL
    zero_rows = np.all(want == 0, axis=-1)
    assert zero_rows.any() and np.all(got[zero_rows] == 0)


@pytest.mark.parametrize("raw,clean", [("  a   b\t\nc ", "a b c"), ("&amp;lt;b&amp;gt;", "<b>"),
                                       ("Ã©tÃ©", "été"), ("", "")])
def test_clean_prompt(raw, clean):
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean
    assert clean_prompt(raw) == clean == prompt_clean(raw)


def test_umt5_rejects_other_ffn():
    from nodes.wan.models.umt5 import UMT5EncoderModel
    with pytest.raises(ValueError, match="gated-gelu"):
        UMT5EncoderModel.from_config({"feed_forward_proj": "relu", "d_model": 8, "num_layers": 1})


def test_clip_image_models_refuse_text_of_another_length(tmp_path):
    """Wan2.1 I2V / FLF2V tell CLIP tokens from text tokens by position (512 text tokens: diffusers'
    image-to-video pipeline always encodes 512). WanImageConditioning with CLIP tokens refuses a prompt
    encoded with another max_length, naming it, rather than mixing image and text tokens; at 512 it runs."""
    from PIL import Image
    from graphrt import Executor, GraphBuilder
    from graphrt.errors import NodeExecutionError
    from graphrt.registry import load_node_packs
    from tests.wan.reference import build_tiny_wan_i2v_pipeline
    load_node_packs()
    folder = tmp_path / "pipe"
    build_tiny_wan_i2v_pipeline(folder, kind="wan21")
    image = tmp_path / "start.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(image)

    def graph(max_length):
        g = GraphBuilder()
        loader = g.node("WanPipelineLoader", source=str(folder))
        pos = g.node("WanTextEncode", text_encoder=loader[1], text="a fox", max_length=max_length)
        neg = g.node("WanTextEncode", text_encoder=loader[1], text="", max_length=max_length)
        img = g.node("LoadImage", image=str(image))
        vision = g.node("WanCLIPVisionLoader", source=str(folder))
        clip = g.node("WanCLIPVisionEncode", clip_vision=vision[0], image=img[0])
        g.node("WanImageConditioning", id="i2v", positive=pos[0], negative=neg[0], vae=loader[2], width=48,
               height=32, num_frames=9, batch=1, start_image=img[0], clip_vision_output=clip[0])
        return g.to_workflow()

    ex = Executor(output_dir=tmp_path / "out")
    with pytest.raises(NodeExecutionError) as info:
        ex.run(graph(24), targets=["i2v"])
    msg = str(info.value.original)
    assert info.value.node_id == "i2v" and "max_length=24" in msg and "512" in msg, msg
    pos = ex.run(graph(512), targets=["i2v"]).outputs["i2v"]["positive"]
    assert pos.image_embeds is not None and tuple(pos.embeds.shape)[1] == 512


def test_tokenizer_refuses_a_length_of_no_tokens(tokenizer_dirs):
    ours = load_tokenizer(tokenizer_dirs["preset"][1], subfolder=None)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="max_length must be a positive number of tokens"):
            ours("a fox", max_length=bad)
    assert ours("a fox", max_length=1).input_ids.tolist() == [[1]]
