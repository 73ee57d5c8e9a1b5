"""Text-description vocabularies: user files or whole words drawn from the model's own tokenizer."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["load_vocabulary", "tokenizer_vocabulary", "vocabulary_hash"]

#: word-start markers of byte-level BPE (GPT-2) and SentencePiece vocabularies
_WORD_START = ("\u0120", "\u2581")


def load_vocabulary(path: str | Path) -> list[str]:
    """One description a line; blank lines and repeated lines dropped, order kept.  A file that is
    not UTF-8 raises naming the file, line and byte (:func:`~oe_assets.datasources.text_datasets.read_text`)."""
    from .text_datasets import read_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist")
    seen, out = set(), []
    for line in read_text(path).splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.add(line)
            out.append(line)
    if len(out) < 2:
        raise ValueError(f"vocabulary file {path} holds {len(out)} description(s); at least 2 are needed")
    return out


def tokenizer_vocabulary(tokenizer, min_length: int = 3, limit: int | None = None) -> list[str]:
    """Whole words of a tokenizer's vocabulary, in id order: alphabetic tokens of at least
    ``min_length`` letters, no special or ``[unused]`` tokens, no word-pieces (``##x`` in WordPiece;
    in BPE/SentencePiece vocabularies only tokens that start a word, marker stripped)."""
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", []))
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    marked = any(tok.startswith(_WORD_START) for tok, _ in by_id[:5000])
    words, seen = [], set()
    for tok, _ in by_id:
        if tok in special:
            continue
        if marked:
            if not tok.startswith(_WORD_START):
                continue
            tok = tok[1:]
        elif tok.startswith("##"):
            continue
        if len(tok) >= min_length and tok.isascii() and tok.isalpha() and tok.lower() not in seen:
            seen.add(tok.lower())
            words.append(tok)
            if limit is not None and len(words) >= limit:
                break
    return words


def vocabulary_hash(descriptions: list[str]) -> str:
    """SHA-256 of the descriptions, one a line: a content version for the vocabulary."""
    return hashlib.sha256("\n".join(descriptions).encode("utf-8")).hexdigest()
