"""Offline CLIP tokenizers for the two SDXL text towers.

Both towers share the OpenAI CLIP byte-level BPE (49408 ids; 49406 = start, 49407 = end), read from the
vocabulary file bundled with ``open_clip_torch``. They differ in text cleaning and padding:

* CLIP-L, as the slow ``transformers`` CLIPTokenizer with ftfy installed (what the original code ran):
  ``ftfy.fix_text`` + whitespace collapse + lower-case; ``[start] + first 75 ids + [end]``, padded with 49407.
* bigG, as ``open_clip.tokenize``: ftfy + HTML-unescape twice + whitespace collapse + lower-case;
  ``[start] + ids + [end]`` cut to the context with the last id forced to 49407, padded with 0.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import ftfy
import regex
import torch

logger = logging.getLogger(__name__)

BOS_ID = 49406
EOS_ID = 49407
CONTEXT_LENGTH = 77
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2
_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Special-token spellings: transformers' vocab.json and open_clip's SimpleTokenizer name them differently.
_HF_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_OPENCLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")


# Plain-text ``merges.txt`` files of a CLIP tokenizer (the same merges as open_clip's file) that a host
# ships, e.g. the Forge family's bundled SDXL tokenizers; tried before open_clip, which such hosts lack.
EXTRA_VOCAB_FILES: list[Path] = []
VOCAB_ENV = "SUPIR_CLIP_MERGES"


def find_bpe_vocab() -> Path:
    """The CLIP BPE merges: $SUPIR_CLIP_MERGES, a host's file, or open_clip's bundled one."""
    candidates = [Path(os.environ[VOCAB_ENV])] if os.environ.get(VOCAB_ENV) else []
    for candidate in candidates + EXTRA_VOCAB_FILES:
        if candidate.is_file():
            return candidate
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise FileNotFoundError(
            "the CLIP tokenizer's merges file was not found: install open_clip_torch (pip install "
            f"open_clip_torch), or set {VOCAB_ENV} to a CLIP tokenizer's merges.txt"
        )
    for location in spec.submodule_search_locations or []:
        candidate = Path(location) / _VOCAB_FILE
        if candidate.is_file():
            return candidate
    from open_clip.tokenizer import default_bpe  # layout changed across versions: ask the package

    candidate = Path(default_bpe())
    if not candidate.is_file():
        raise FileNotFoundError(f"open_clip's {_VOCAB_FILE} not found (looked at {candidate})")
    return candidate


def read_merges(path: Path) -> list[tuple[str, ...]]:
    """The merges of open_clip's gzip file or a transformers ``merges.txt`` (both: one header line)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]


def _byte_alphabet() -> dict[int, str]:
    """One printable character per byte value; insertion order is the order of the CLIP vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in chars]
    chars.update({b: chr(256 + i) for i, b in enumerate(others)})
    return chars


class ClipBPE:
    """Byte-level BPE over the CLIP merges; ``encode`` maps already-cleaned text to ids."""

    def __init__(self, vocab_path: Path | None = None):
        path = vocab_path or find_bpe_vocab()
        merges = read_merges(path)
        self._byte_chars = _byte_alphabet()
        alphabet = list(self._byte_chars.values())
        tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
        self.token_ids = {t: i for i, t in enumerate(tokens)}
        self._ranks = {pair: i for i, pair in enumerate(merges)}
        self.special_ids = {
            name: BOS_ID + i for names in (_HF_SPECIALS, _OPENCLIP_SPECIALS) for i, name in enumerate(names)
        }
        self._cache: dict[str, tuple[str, ...]] = {}
        if len(tokens) != BOS_ID:
            raise ValueError(f"unexpected CLIP vocabulary size {len(tokens) + 2} in {path}")
        self._word_re = {
            names: regex.compile("|".join(map(regex.escape, names)) + "|" + _WORD_PATTERN, regex.IGNORECASE)
            for names in (_HF_SPECIALS, _OPENCLIP_SPECIALS)
        }

    def _bpe(self, word: str) -> tuple[str, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            best = min(itertools.pairwise(symbols), key=lambda p: self._ranks.get(p, len(self._ranks)))
            if best not in self._ranks:
                break
            symbols = _merge_pair(symbols, best)
        self._cache[word] = tuple(symbols)
        return self._cache[word]

    def encode(self, text: str, specials: tuple[str, str] = _HF_SPECIALS) -> list[int]:
        """BPE ids of cleaned, lower-cased ``text`` (no start/end ids added)."""
        ids: list[int] = []
        for word in self._word_re[specials].findall(text):
            if word in specials:
                ids.append(self.special_ids[word])
                continue
            mapped = "".join(self._byte_chars[b] for b in word.encode("utf-8"))
            ids.extend(self.token_ids[s] for s in self._bpe(mapped))
        return ids


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


@functools.cache
def get_bpe() -> ClipBPE:
    return ClipBPE()


def _collapse_whitespace(text: str) -> str:
    return regex.sub(r"\s+", " ", text).strip()


def clean_clip_l(text: str) -> str:
    return _collapse_whitespace(ftfy.fix_text(text)).lower()


def clean_openclip(text: str) -> str:
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def encode_clip_l(text: str) -> list[int]:
    """CLIP-L BPE ids without start/end, as the slow transformers tokenizer produces them.

    transformers first splits the raw text on its literal special tokens (case-sensitive) and cleans each
    piece separately, so a literal "<|endoftext|>" in a prompt becomes id 49407.
    """
    bpe = get_bpe()
    pieces = regex.split("(" + "|".join(map(regex.escape, _HF_SPECIALS)) + ")", text)
    ids: list[int] = []
    for piece in pieces:
        if piece in _HF_SPECIALS:
            ids.append(bpe.special_ids[piece])
        elif piece:
            ids.extend(bpe.encode(clean_clip_l(piece), _HF_SPECIALS))
    return ids


def encode_openclip(text: str) -> list[int]:
    """open_clip BPE ids without start/end."""
    return get_bpe().encode(clean_openclip(text), _OPENCLIP_SPECIALS)


def tokenize_clip_l(texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """[B, context] int64 ids: start + first (context-2) ids + end, padded with the end id 49407."""
    out = torch.full((len(texts), context_length), EOS_ID, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [BOS_ID, *encode_clip_l(text)[: context_length - 2], EOS_ID]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def tokenize_bigg(texts: Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """[B, context] int64 ids as open_clip.tokenize: cut to the context, last id forced to 49407, pad 0."""
    out = torch.zeros((len(texts), context_length), dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [BOS_ID, *encode_openclip(text), EOS_ID]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = EOS_ID
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
