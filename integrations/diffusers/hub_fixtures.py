"""A local, synthetic Hugging Face hub cache for the hub repositories diffusers' fast flow-pipeline tests ask for.

Offline, the fast tests of SD3, Flux and the other flow pipelines stop at ``CLIPTokenizer.from_pretrained(
"hf-internal-testing/tiny-random-clip")``, ``AutoTokenizer`` / ``AutoConfig`` / ``T5EncoderModel.from_pretrained(
"hf-internal-testing/tiny-random-t5")``. This module writes those repositories ourselves, from scratch, into a cache
laid out as huggingface_hub's (``models--org--name/snapshots/<revision>/`` and ``refs/main``), so that with
``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1`` the loaders find them:

- ``tiny-random-clip``: a byte-level BPE tokenizer (CLIP's: byte alphabet, ``</w>`` word ends, merges learned here by
  plain BPE on a synthetic corpus of pseudo-words) of at most 1000 tokens, the vocabulary size of the tests' tiny CLIP
  text encoders, specials last (the encoders find the end token as the largest id), ``model_max_length`` 77;
- ``tiny-random-t5``: a Unigram (sentencepiece-style) T5 tokenizer whose pieces are the corpus's words (score: log of
  the word's frequency) and single characters, with T5's ``<pad>``, ``</s>``, ``<unk>`` and 100 ``<extra_id_*>``; a
  T5 config of the dimensions the tests' transformers are built against (d_model 32: their ``joint_attention_dim``)
  and a randomly initialised ``T5EncoderModel`` (seed 0) saved with ``save_pretrained``;
- ``tiny-random-umt5``: the same tokenizer and a random ``UMT5EncoderModel`` of the same sizes (AuraFlow);
- ``dummy-gemma``: Gemma's byte-fallback BPE tokenizer on a synthetic vocabulary (Lumina, Sana, PRX), and
  ``dummy-hunyaunvideo``'s ``tokenizer/`` / ``tiny-random-LlamaForCausalLM``: Llama's (HunyuanVideo; HiDream, with a
  random tiny ``LlamaForCausalLM``);
- ``tiny-random-Qwen2VLForConditionalGeneration``: Qwen2's byte-level BPE tokenizer on a synthetic vocabulary, with
  Qwen2's special tokens at Qwen2's ids and Qwen's chat template (Qwen-Image, Z-Image, Flux 2 Klein, ...).

Nothing is downloaded or copied from the hub: these are synthetic components, so value tests that compare against
slices diffusers recorded with the real ones may fail, for stock diffusers and for ours alike. The files are
deterministic (fixed seeds, no timestamps), and a repository's revision is the SHA-1 of its files, so one build equals
the next and a changed build gets a new snapshot.

    python integrations/diffusers/hub_fixtures.py [CACHE]     builds the cache (default .cache/hub-synthetic)
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import pathlib
import random
import shutil
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO / ".cache" / "hub-synthetic"
CLIP_REPO = "hf-internal-testing/tiny-random-clip"
T5_REPO = "hf-internal-testing/tiny-random-t5"
UMT5_REPO = "hf-internal-testing/tiny-random-umt5"
GEMMA_REPO = "hf-internal-testing/dummy-gemma"
GEMMA_VOCAB = 1000
HUNYUAN_REPO = "finetrainers/dummy-hunyaunvideo"  # sic: the tests' spelling
LLAMA_VOCAB = 1000
LLAMA_CAUSAL_REPO = "hf-internal-testing/tiny-random-LlamaForCausalLM"
QWEN2_REPO = "hf-internal-testing/tiny-random-Qwen2VLForConditionalGeneration"
QWEN_VOCAB = 1000
CLIP_VOCAB = 1000  # the tests' CLIPTextConfig(vocab_size=1000): every id must embed
T5_EXTRA_IDS = 100


def corpus(n_words: int = 400, seed: int = 0) -> dict:
    """Synthetic text: ``n_words`` pseudo-words (1-4 consonant-vowel syllables) -> a Zipf-like count, from a seeded
    generator. Ordered by first appearance, so everything derived from it is deterministic."""
    rng = random.Random(seed)
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: dict = {}
    while len(words) < n_words:
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 4)))
        words.setdefault(w, 0)
    return {w: max(1, round(1000 / (rank + 1))) for rank, w in enumerate(words)}


def bytes_to_unicode() -> dict:
    """Byte -> printable character, GPT-2/CLIP's byte-level alphabet: printable Latin-1 bytes map to themselves, the
    others to code points from 256 on, so that every byte string is a string of visible characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def clip_symbols(word: str) -> tuple:
    """CLIP's initial symbols of a word: its byte-level characters, the last one carrying ``</w>``."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode()]
    return tuple(chars[:-1] + [chars[-1] + "</w>"])


def gemma_symbols(word: str) -> tuple:
    """Gemma's (sentencepiece BPE) initial symbols of a word: ``▁`` (a space) then its characters."""
    return tuple("▁" + word)


def learn_bpe(words: dict, n_merges: int, symbols=clip_symbols) -> list:
    """Plain BPE: starting from each word's initial ``symbols`` (CLIP's by default), merge the most frequent adjacent
    pair (ties: the smallest pair) ``n_merges`` times or until no pair is left; the merges in order."""
    split = {symbols(w): c for w, c in words.items()}
    merges = []
    while len(merges) < n_merges:
        pairs: collections.Counter = collections.Counter()
        for sym, c in split.items():
            for pair in zip(sym, sym[1:]):
                pairs[pair] += c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for sym, c in split.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            merged[tuple(out)] = c
        split = merged
    return merges


def build_clip(dest: pathlib.Path) -> None:
    """tiny-random-clip: CLIP's byte-level BPE tokenizer on a synthetic vocabulary (ids < CLIP_VOCAB)."""
    from transformers import CLIPTokenizer

    alphabet = list(bytes_to_unicode().values())
    specials = ["<|startoftext|>", "<|endoftext|>"]
    merges = learn_bpe(corpus(), CLIP_VOCAB - 2 * len(alphabet) - len(specials))
    tokens = alphabet + [a + "</w>" for a in alphabet] + [a + b for a, b in merges] + specials
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    assert len(vocab) <= CLIP_VOCAB, len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tok.save_pretrained(dest)


def byte_fallback_bpe(specials: list, size: int) -> tuple:
    """A sentencepiece-style BPE vocabulary of at most ``size`` tokens (Gemma's, Llama's): ``specials``, the 256 byte
    tokens ``<0x00>``..``<0xFF>`` (the byte fallback), ``▁`` and the printable ASCII characters, then the merges learned
    here on the corpus's ``▁``-words; (token -> id, merges)."""
    alphabet = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(ord("!"), ord("~") + 1)]
    merges = learn_bpe(corpus(), size - len(alphabet), gemma_symbols)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(alphabet + [a + b for a, b in merges]))}
    assert len(vocab) <= size, len(vocab)
    return vocab, merges


def build_gemma(dest: pathlib.Path) -> None:
    """dummy-gemma: Gemma's tokenizer (BPE with byte fallback, spaces as ``▁``, ``<bos>`` first) on a synthetic
    vocabulary of GEMMA_VOCAB tokens, Gemma's specials first (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3,
    ``<mask>`` 4). The tests build their Gemma text encoders from configs (of the default vocabulary size, or of
    ``tokenizer.vocab_size``) and take only the tokenizer from the hub."""
    from transformers import GemmaConfig, GemmaTokenizer

    vocab, merges = byte_fallback_bpe(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], GEMMA_VOCAB)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True)
    tok.save_pretrained(dest)
    # AutoTokenizer reads the model type from config.json first: a tiny Gemma config of the tokenizer's vocabulary
    GemmaConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=4).save_pretrained(dest)


def build_hunyuan_llama(dest: pathlib.Path) -> None:
    """dummy-hunyaunvideo's ``tokenizer/`` (HunyuanVideo's fast tests load only it, beside tiny-random-clip): Llama's
    tokenizer below; the tests' LlamaModel has vocab_size 1000."""
    llama_tokenizer().save_pretrained(dest / "tokenizer")


def llama_tokenizer():
    """Llama's tokenizer (BPE with byte fallback, a prefix ``▁``, ``<s>`` first) on a synthetic vocabulary of
    LLAMA_VOCAB tokens, Llama's specials first (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2) and a padding token ``<pad>`` 3
    (the HunyuanVideo pipelines pad to a fixed length)."""
    from transformers import LlamaTokenizer

    vocab, merges = byte_fallback_bpe(["<unk>", "<s>", "</s>", "<pad>"], LLAMA_VOCAB)
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, pad_token="<pad>")


def build_llama_causal(dest: pathlib.Path) -> None:
    """tiny-random-LlamaForCausalLM (HiDream's fourth text encoder and its tokenizer): the Llama tokenizer above and a
    randomly initialised (seed 0) two-layer LlamaForCausalLM, 16 wide (the tests' HiDream transformer takes caption
    channels [32, 16] from the T5 and Llama encoders and reads Llama layers 0 and 1)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = llama_tokenizer()
    tok.save_pretrained(dest)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, pad_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(dest)


def gpt2_symbols(word: str) -> tuple:
    """GPT-2 / Qwen's initial symbols of a space-led word: the byte-level characters of `` word`` (the space is
    ``Ġ``)."""
    table = bytes_to_unicode()
    return tuple(table[b] for b in (" " + word).encode())


# Qwen2's special tokens at Qwen2's ids (the tests' Qwen configs name the vision ones: vision_start_token_id 151652)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_FIRST_SPECIAL = 151643
# Qwen's chat layout (<|im_start|>role, the content, <|im_end|>); a content given as parts keeps its text parts
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


# Qwen2-VL's processor: its image and video processors' settings (transformers' defaults for Qwen2-VL: 14-pixel
# patches merged 2 x 2, CLIP's normalisation)
_QWEN2VL_PIXELS = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                   "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                   "merge_size": 2, "patch_size": 14, "resample": 3, "rescale_factor": 1 / 255,
                   "temporal_patch_size": 2}
QWEN2VL_PROCESSOR = {
    "processor_class": "Qwen2VLProcessor",
    "image_processor": {**_QWEN2VL_PIXELS, "image_processor_type": "Qwen2VLImageProcessor",
                        "size": {"longest_edge": 1003520, "shortest_edge": 3136}},
    "video_processor": {**_QWEN2VL_PIXELS, "video_processor_type": "Qwen2VLVideoProcessor", "do_sample_frames": False,
                        "max_frames": 768, "max_video_tokens": 128000, "min_frames": 4, "return_metadata": False,
                        "size": {"longest_edge": 602112, "shortest_edge": 100352}},
}


def build_qwen2(dest: pathlib.Path) -> None:
    """tiny-random-Qwen2VLForConditionalGeneration's tokenizer (the Qwen-Image, Z-Image, Ovis, Krea 2, HunyuanImage 2.1
    and Flux 2 Klein fast tests load only it, Kandinsky 5 and Qwen-Image Edit its processor; their Qwen text encoders
    are built from configs of Qwen's vocabulary size): Qwen2's byte-level BPE on a synthetic vocabulary (the 256 byte
    characters, then merges learned on the corpus's space-led words, QWEN_VOCAB tokens in all), Qwen2's special tokens
    at Qwen2's ids (the configs' vision and image token ids), Qwen's chat template, and Qwen2-VL's processor.

    Known gap: Kandinsky 5 image-to-image truncates its prompt at 54 + max_sequence_length tokens, 54 being the real
    Qwen tokenizer's count for its system text; this vocabulary's merges, learned on the corpus, spell that text in
    165 tokens, so truncation cuts the <|image_pad|> away ("tokens: 0, features: 4") and the file stays excluded.
    Learning merges on the template's words would fix it, and move every Qwen selection's fixture revision."""
    from transformers import Qwen2Tokenizer, Qwen2VLConfig

    alphabet = list(bytes_to_unicode().values())
    merges = learn_bpe(corpus(), QWEN_VOCAB - len(alphabet), gpt2_symbols)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(alphabet + [a + b for a, b in merges]))}
    assert len(vocab) <= QWEN_VOCAB, len(vocab)
    vocab.update({t: QWEN_FIRST_SPECIAL + i for i, t in enumerate(QWEN_SPECIALS)})
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, chat_template=QWEN_CHAT_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    tok.save_pretrained(dest)
    # the processor (Kandinsky 5 and Qwen-Image Edit load it with AutoProcessor / Qwen2VLProcessor): this tokenizer
    # with Qwen2-VL's image and video processors. Written as their config, not built: transformers' video processor
    # needs torchvision, which a process sees only if it was on the path before transformers' first import
    (dest / "processor_config.json").write_text(json.dumps(QWEN2VL_PROCESSOR, indent=2, sort_keys=True) + "\n")
    (dest / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)
    # AutoTokenizer (the processor's loader) reads the model type from config.json first: a tiny Qwen2-VL config
    Qwen2VLConfig(text_config={"vocab_size": 151936, "hidden_size": 16, "intermediate_size": 16,
                               "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2},
                  vision_config={"depth": 2, "embed_dim": 16, "hidden_size": 16, "num_heads": 2}).save_pretrained(dest)


def t5_pieces() -> list:
    """The T5 Unigram vocabulary: (piece, log-probability score), T5's order: <pad>, </s>, <unk>, the pieces, then the
    extra ids in reverse. Pieces: every corpus word as a word start (``▁word``), and every printable ASCII character
    alone and as a word start, scored below any word so that words win where they match."""
    words = corpus()
    total = sum(words.values())
    pieces = [("▁" + w, math.log(c / total)) for w, c in words.items()]
    floor = math.log(1 / total) - 1.0
    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    pieces += [("▁", floor)] + [("▁" + ch, floor - 1.0) for ch in chars] + [(ch, floor - 2.0) for ch in chars]
    pieces = list(dict(pieces).items())  # a character that is also a word keeps the word's score
    return ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + pieces
            + [(f"<extra_id_{i}>", 0.0) for i in range(T5_EXTRA_IDS - 1, -1, -1)])


def _build_t5_family(dest: pathlib.Path, umt5: bool) -> None:
    """The T5 tokenizer on the synthetic pieces, a tiny config of the T5 family and its randomly initialised encoder
    (seed 0): T5's (``T5Config`` / ``T5EncoderModel``) or UMT5's (the same architecture without shared relative
    position biases: ``UMT5Config`` / ``UMT5EncoderModel``), of the same sizes."""
    import torch
    import transformers
    from transformers import T5Tokenizer

    pieces = t5_pieces()
    tok = T5Tokenizer(vocab=pieces, extra_ids=T5_EXTRA_IDS, model_max_length=512)
    tok.save_pretrained(dest)
    family = "UMT5" if umt5 else "T5"
    # the tests build their transformers for a 32-wide text encoder (joint_attention_dim / text_embed_dim 32)
    config = getattr(transformers, f"{family}Config")(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=5, num_decoder_layers=5, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.1, feed_forward_proj="relu", initializer_factor=0.002,
        layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, is_encoder_decoder=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = getattr(transformers, f"{family}EncoderModel")(config)
    model.save_pretrained(dest)  # also writes config.json (AutoConfig reads it)


def build_t5(dest: pathlib.Path) -> None:
    """tiny-random-t5: a Unigram T5 tokenizer on the synthetic pieces, a tiny T5 config and a random T5 encoder."""
    _build_t5_family(dest, umt5=False)


def build_umt5(dest: pathlib.Path) -> None:
    """tiny-random-umt5: the same tokenizer, a tiny UMT5 config and a random UMT5 encoder (AuraFlow's fast tests load
    it beside tiny-random-t5's tokenizer, so its vocabulary covers that tokenizer's ids)."""
    _build_t5_family(dest, umt5=True)


BUILDERS = {CLIP_REPO: build_clip, T5_REPO: build_t5, UMT5_REPO: build_umt5, GEMMA_REPO: build_gemma,
            HUNYUAN_REPO: build_hunyuan_llama, LLAMA_CAUSAL_REPO: build_llama_causal, QWEN2_REPO: build_qwen2}


def revision(folder: pathlib.Path) -> str:
    """The SHA-1 of a folder's files (names and bytes, in sorted order): the snapshot's commit id."""
    h = hashlib.sha1()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def build_cache(cache: pathlib.Path = DEFAULT_CACHE, repos=tuple(BUILDERS)) -> dict:
    """Writes ``repos`` into the hub cache at ``cache`` (``models--org--name/snapshots/<rev>/``, ``refs/main``);
    returns repo id -> revision. A snapshot already there is kept; refs/main always names the one just built."""
    cache = pathlib.Path(cache)
    revs = {}
    for repo in repos:
        if repo not in BUILDERS:
            raise ValueError(f"no synthetic builder for hub repository {repo!r}; known: {sorted(BUILDERS)}")
        root = cache / f"models--{repo.replace('/', '--')}"
        with tempfile.TemporaryDirectory() as tmp:
            built = pathlib.Path(tmp) / "files"
            BUILDERS[repo](built)
            rev = revision(built)
            snap = root / "snapshots" / rev
            if not snap.is_dir():
                snap.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(built, snap.with_name(rev + ".partial"), dirs_exist_ok=True)
                snap.with_name(rev + ".partial").rename(snap)  # complete or absent, never half written
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(rev)
        revs[repo] = rev
    return revs


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CACHE
    print(json.dumps(build_cache(out), indent=1))
