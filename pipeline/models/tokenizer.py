"""CLIP tokenizer files built offline from open_clip's bundled BPE merges.

open_clip ships ``bpe_simple_vocab_16e6.txt.gz``; the standard CLIP ``vocab.json`` and
``merges.txt`` derive from it (48,894 merges, 49,408 tokens). Building them here lets the
built-in tiny models carry a REAL CLIP vocabulary without any download.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from pipeline.errors import UserError

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2
# A tokenizer with fewer tokens than this is broken (e.g. the 2-token tokenizer that
# CLIPTokenizer.from_pretrained returns offline for an uncached hub id).
MIN_VOCAB_SIZE = 1000


def _bpe_path() -> Path:
    import open_clip.tokenizer as oct

    return Path(oct.default_bpe())


def write_clip_vocab(directory: Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (HF CLIP format) into ``directory``."""
    from open_clip.tokenizer import bytes_to_unicode

    lines = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB_SIZE, len(tokens)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer(directory: Path, pad_token: str = "<|endoftext|>"):
    """A CLIPTokenizer with the real CLIP vocabulary. SDXL's second tokenizer pads with "!"."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_vocab(directory)
    # model_max_length must be set: without it prompts longer than 77 tokens overflow the encoder.
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77, pad_token=pad_token)


def check_tokenizer(tokenizer, where: str) -> None:
    """Refuse a tokenizer that loaded broken (offline hub look-ups can return a 2-token one)."""
    size = len(tokenizer)
    if size < MIN_VOCAB_SIZE:
        raise UserError(
            f"The tokenizer loaded from {where} has only {size} tokens (expected ~{CLIP_VOCAB_SIZE}); "
            "it is broken or incomplete, usually because it is not in the local cache. "
            "Download the model or pass a local folder that contains the tokenizer files."
        )


T5_VOCAB_SIZE = 1200  # the tiny T5's: enough pieces that check_tokenizer accepts it and words stay short


def build_t5_tokenizer(vocab_size: int = T5_VOCAB_SIZE, model_max_length: int = 512):
    """A small T5TokenizerFast trained offline (``tokenizers``' Unigram trainer, Metaspace pre-tokenizer, the
    T5 specials ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2) on the words of CLIP's vocabulary, for the built-in
    tiny SD3 model's third text encoder (no sentencepiece model ships offline; environment.md)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import T5TokenizerFast

    lines = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    words = sorted({"".join(line.split()).replace("</w>", "") for line in lines if line.endswith("</w>")})[::16]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator([" ".join(words[i : i + 64]) for i in range(0, len(words), 64)], trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                            special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tok, extra_ids=0, pad_token="<pad>", eos_token="</s>",
                           unk_token="<unk>", model_max_length=model_max_length)
