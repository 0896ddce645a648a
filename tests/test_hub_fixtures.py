"""The synthetic hub cache of integrations/diffusers/hub_fixtures.py: deterministic files, a layout huggingface_hub
reads offline, and components the loaders of diffusers' flow-pipeline tests accept (the calls those tests make)."""
import pathlib

import pytest

from integrations.diffusers import hub_fixtures as hf

# transformers is installed by `make test-integrations` (requirements-integrations.txt), not by `make test`
pytestmark = pytest.mark.integrations
transformers = pytest.importorskip("transformers", reason="installed by make test-integrations")

PROMPT = "A painting of a squirrel eating a burger"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return root, hf.build_cache(root)


def _files(root: pathlib.Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_write_the_same_files(cache, tmp_path):
    root, revs = cache
    assert hf.build_cache(tmp_path) == revs
    assert _files(tmp_path) == _files(root)
    for repo, rev in revs.items():
        folder = root / f"models--{repo.replace('/', '--')}"
        assert (folder / "refs" / "main").read_text() == rev
        assert hf.revision(folder / "snapshots" / rev) == rev  # the revision names the content


def test_bpe_merges_the_most_frequent_pair_first_and_breaks_ties_by_order():
    # ab x5: (a, b</w>) 5; abc x1: (a, b) 1, (b, c</w>) 1 -> then the tie goes to the smaller pair, (a, b)
    assert hf.learn_bpe({"ab": 5, "abc": 1}, 10) == [("a", "b</w>"), ("a", "b"), ("ab", "c</w>")]


def test_an_unknown_repository_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no synthetic builder for hub repository 'org/none'"):
        hf.build_cache(tmp_path, ("org/none",))


def test_the_loaders_of_the_flow_tests_accept_the_cache_offline(cache):
    root, _ = cache
    kw = {"cache_dir": root, "local_files_only": True}
    clip = transformers.CLIPTokenizer.from_pretrained(hf.CLIP_REPO, **kw)
    ids = clip(PROMPT, padding="max_length", max_length=clip.model_max_length).input_ids
    assert clip.model_max_length == 77 and len(ids) == 77
    # every id embeds in the tests' CLIPTextConfig(vocab_size=1000); the end token is the largest id of the prompt
    # (CLIP's text model with eos_token_id=2 pools at the argmax id)
    assert max(ids) < hf.CLIP_VOCAB and ids[0] == clip.bos_token_id
    assert max(ids) == clip.eos_token_id
    assert clip.unk_token_id not in ids[1:ids.index(clip.eos_token_id)]
    assert clip.decode(ids, skip_special_tokens=True) == PROMPT.lower()

    t5 = transformers.AutoTokenizer.from_pretrained(hf.T5_REPO, **kw)
    fast = transformers.T5TokenizerFast.from_pretrained(hf.T5_REPO, **kw)
    ids = t5(PROMPT).input_ids
    assert fast(PROMPT).input_ids == ids and ids[-1] == t5.eos_token_id == 1 and t5.unk_token_id not in ids
    assert t5.decode(ids, skip_special_tokens=True) == PROMPT

    config = transformers.AutoConfig.from_pretrained(hf.T5_REPO, **kw)
    assert (config.model_type, config.d_model) == ("t5", 32) and config.vocab_size >= len(t5)
    model, info = transformers.T5EncoderModel.from_pretrained(hf.T5_REPO, output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the saved weights cover the model
    import torch

    out = model(**t5(PROMPT, return_tensors="pt")).last_hidden_state
    assert out.shape == (1, len(ids), 32) and torch.isfinite(out).all()


def test_the_umt5_repository_loads_as_auraflow_loads_it(cache):
    # AuraFlow's fast tests: UMT5EncoderModel.from_pretrained(tiny-random-umt5) encodes tiny-random-t5's token ids
    root, revs = cache
    kw = {"cache_dir": root, "local_files_only": True}
    import torch

    t5 = transformers.AutoTokenizer.from_pretrained(hf.T5_REPO, **kw)
    config = transformers.AutoConfig.from_pretrained(hf.UMT5_REPO, **kw)
    assert (config.model_type, config.d_model) == ("umt5", 32) and config.vocab_size >= len(t5)
    model, info = transformers.UMT5EncoderModel.from_pretrained(hf.UMT5_REPO, output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = t5(PROMPT, return_tensors="pt")
    out = model(**ids).last_hidden_state
    assert out.shape == (1, ids.input_ids.shape[1], 32) and torch.isfinite(out).all()
    # UMT5, not T5: every layer has its own relative attention bias
    assert all(layer.layer[0].SelfAttention.has_relative_attention_bias for layer in model.encoder.block)
    assert revs[hf.UMT5_REPO] != revs[hf.T5_REPO]


def test_the_gemma_tokenizer_loads_as_the_gemma_pipelines_load_it(cache):
    # Lumina, Lumina 2, PRX, Sana: AutoTokenizer / GemmaTokenizer.from_pretrained(dummy-gemma); the text encoders are
    # built from configs (PRX's of tokenizer.vocab_size)
    root, _ = cache
    kw = {"cache_dir": root, "local_files_only": True}
    tok = transformers.AutoTokenizer.from_pretrained(hf.GEMMA_REPO, **kw)
    assert isinstance(tok, transformers.GemmaTokenizer)
    assert transformers.GemmaTokenizer.from_pretrained(hf.GEMMA_REPO, **kw)(PROMPT).input_ids == tok(PROMPT).input_ids
    ids = tok(PROMPT).input_ids
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids and max(ids) < tok.vocab_size == hf.GEMMA_VOCAB
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT
    # a character outside the alphabet falls back to its UTF-8 bytes, and decodes back
    assert tok.decode(tok("é ü").input_ids, skip_special_tokens=True) == "é ü"
    # the learned merges are used: a corpus word is fewer tokens than its characters
    word = next(iter(hf.corpus()))
    assert len(tok(word, add_special_tokens=False).input_ids) < len(word)


def test_the_llama_repositories_load_as_hunyuan_video_and_hidream_load_them(cache):
    root, _ = cache
    kw = {"cache_dir": root, "local_files_only": True}
    import torch

    # HunyuanVideo: LlamaTokenizer(Fast).from_pretrained(dummy-hunyaunvideo, subfolder="tokenizer"), LlamaModel of
    # vocab_size 1000 built from a config
    tok = transformers.LlamaTokenizer.from_pretrained(hf.HUNYUAN_REPO, subfolder="tokenizer", **kw)
    ids = tok(PROMPT).input_ids
    assert transformers.LlamaTokenizerFast.from_pretrained(hf.HUNYUAN_REPO, subfolder="tokenizer", **kw)(
        PROMPT).input_ids == ids
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 3)
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids and max(ids) < 1000
    assert tok.decode(ids, skip_special_tokens=True) == PROMPT
    # HiDream: AutoTokenizer and LlamaForCausalLM from tiny-random-LlamaForCausalLM, hidden states of layers 0 and 1
    # 16 wide; the same tokenizer
    tok4 = transformers.AutoTokenizer.from_pretrained(hf.LLAMA_CAUSAL_REPO, **kw)
    assert tok4(PROMPT).input_ids == ids
    model, info = transformers.LlamaForCausalLM.from_pretrained(hf.LLAMA_CAUSAL_REPO, output_loading_info=True, **kw)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    out = model(**tok4(PROMPT, return_tensors="pt"), output_hidden_states=True).hidden_states
    assert len(out) == 3 and out[1].shape == (1, len(ids), 16) and all(torch.isfinite(h).all() for h in out)


def test_the_qwen2_tokenizer_loads_as_the_qwen_pipelines_load_it(cache):
    # Qwen-Image, Z-Image, Krea 2, HunyuanImage 2.1: Qwen2Tokenizer.from_pretrained; Flux 2 Klein: Qwen2TokenizerFast
    # and apply_chat_template; the Qwen text encoders are built from configs of vocab_size 151936 / 152064
    root, _ = cache
    kw = {"cache_dir": root, "local_files_only": True}
    tok = transformers.Qwen2Tokenizer.from_pretrained(hf.QWEN2_REPO, **kw)
    text = f"<|im_start|>system\nDescribe the image.<|im_end|>\n<|im_start|>user\n{PROMPT}<|im_end|>\n"
    ids = tok(text).input_ids
    assert transformers.Qwen2TokenizerFast.from_pretrained(hf.QWEN2_REPO, **kw)(text).input_ids == ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") == 151644 and ids.count(151645) == 2
    assert tok.convert_tokens_to_ids("<|vision_start|>") == 151652 and tok.pad_token_id == tok.eos_token_id == 151643
    assert max(i for i in ids if i < hf.QWEN_FIRST_SPECIAL) < hf.QWEN_VOCAB and max(ids) < 151936
    assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    assert chat == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    parts = [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]
    assert tok.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == chat


def test_the_qwen2_vl_processor_loads_as_kandinsky5_and_qwen_image_edit_load_it(cache):
    # in a process of its own that puts torchvision on the path before transformers' first import, as swap.py does
    # for diffusers' tests (transformers decides then whether its video processors can load)
    root, _ = cache
    script = f"""
import json, sys
sys.path.insert(0, {str(hf.REPO)!r})
from integrations.vendor import import_torchvision
import_torchvision()
import numpy as np, PIL.Image, transformers
from integrations.diffusers import hub_fixtures as hf
kw = {{"cache_dir": {str(root)!r}, "local_files_only": True}}
proc = transformers.AutoProcessor.from_pretrained(hf.QWEN2_REPO, **kw)
tok = transformers.Qwen2Tokenizer.from_pretrained(hf.QWEN2_REPO, **kw)
image = PIL.Image.fromarray(np.zeros((32, 32, 3), np.uint8))
out = proc(text=["<|vision_start|><|image_pad|><|vision_end|>" + {PROMPT!r}], images=[image], return_tensors="pt")
print(json.dumps({{"cls": type(proc).__name__, "template": proc.chat_template == hf.QWEN_CHAT_TEMPLATE,
                  "same_tokens": proc.tokenizer({PROMPT!r}).input_ids == tok({PROMPT!r}).input_ids,
                  "grid": out.image_grid_thw.tolist(), "image_tokens": out.input_ids[0].tolist().count(151655),
                  "pixels": list(out.pixel_values.shape)}}))
"""
    import json
    import os
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["cls"] == "Qwen2VLProcessor" and got["template"] and got["same_tokens"]
    # a 32 x 32 image is resized to 56 x 56 (min_pixels 3136): 4 x 4 patches of 14 pixels (each 3 channels x 2
    # frames x 14 x 14), merged 2 x 2 into the 4 image tokens that replace the one <|image_pad|>
    assert got["grid"] == [[1, 4, 4]] and got["image_tokens"] == 4 and got["pixels"] == [16, 3 * 2 * 14 * 14]
