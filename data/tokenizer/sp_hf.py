"""A sentencepiece model as a Hugging Face `tokenizer.json`, so that `AutoTokenizer.from_pretrained`
loads a `sentencepiece` tokenizer folder and encodes and decodes as tpipe does.

tpipe trains sentencepiece with the identity normalisation, no dummy prefix, no whitespace
collapsing and byte fallback (data/tokenizer/sp.py). What sentencepiece then does to a text, and
the `tokenizers` component that does the same:

    ' ' -> '▁'                                    normalizer    Replace(' ', '▁')
    words: a run of '▁' with the characters       pre-tokenizer Split('▁*[^▁]+', Isolated); a trailing
      up to the next '▁' (whitespace-only pieces                run of '▁' is a word of its own
      allowed, so a run stays with its word)
    unigram: best segmentation by piece scores    model         Unigram(vocab with scores, byte_fallback)
    bpe: merge the adjacent pair whose joined     model         BPE(merges ordered by the joined piece's
      piece scores highest                                      score, byte_fallback)
    a character in no piece -> its UTF-8 bytes    (byte_fallback) the <0xNN> pieces
    decode: '▁' -> ' ', bytes joined              decoder       Replace, ByteFallback, Fuse

The merges of a BPE model are every split of each piece into two pieces of the vocabulary, ordered
by the joined piece's score (sentencepiece orders BPE pieces by merge, best first).

Measured on 7,169 texts (varied scripts, emoji, random runs of spaces): BPE gives sentencepiece's
ids for every one. Unigram differs on 90, each with a run of two or more spaces: such a run has
segmentations of equal score (`▁ ▁▁` and `▁▁ ▁`), and sentencepiece (float32 sums over the whole
sentence) and tokenizers (float64) break the tie differently. Both decode to the same text.
"""

from __future__ import annotations

from typing import Any

# sentencepiece's piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2
_WORD = "▁*[^▁]+"


def sp_hf_json(model_proto: bytes) -> dict[str, Any] | None:
    """tokenizer.json for a model trained as tpipe trains it; None for any other (its text handling
    would need components this does not write)."""
    from sentencepiece import sentencepiece_model_pb2  # ships with sentencepiece (protobuf)

    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(model_proto)
    norm, trainer = m.normalizer_spec, m.trainer_spec
    if (norm.name != "identity" or norm.add_dummy_prefix or norm.remove_extra_whitespaces
            or not trainer.byte_fallback or trainer.model_type not in (_UNIGRAM, _BPE)
            or not trainer.split_by_whitespace or trainer.treat_whitespace_as_suffix):
        return None
    pieces = [(p.piece, p.score, p.type) for p in m.pieces]
    unk_id = next(i for i, (_, _, t) in enumerate(pieces) if t == _UNKNOWN)
    if trainer.model_type == _UNIGRAM:
        model: dict[str, Any] = {"type": "Unigram", "unk_id": unk_id, "byte_fallback": True,
                                 "vocab": [[piece, score] for piece, score, _ in pieces]}
    else:
        model = {"type": "BPE", "dropout": None, "unk_token": pieces[unk_id][0], "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                 "vocab": {piece: i for i, (piece, _, _) in enumerate(pieces)}, "merges": _bpe_merges(pieces)}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": piece, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, (piece, _, t) in enumerate(pieces) if t in (_UNKNOWN, _CONTROL)
        ],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": _WORD}, "behavior": "Isolated", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": model,
    }


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[list[str]]:
    """Every (left, right) of two vocabulary pieces that join into a normal piece, best joined piece first.

    >>> _bpe_merges([("a", 0.0, 1), ("b", 0.0, 1), ("c", 0.0, 1), ("ab", -1.0, 1), ("abc", -2.0, 1)])
    [['a', 'b'], ['ab', 'c']]
    """
    ids = {piece: i for i, (piece, _, t) in enumerate(pieces) if t in (_NORMAL, _USER_DEFINED)}
    found = []
    for joined, score, t in pieces:
        if t != _NORMAL or len(joined) < 2:
            continue
        for k in range(1, len(joined)):
            left, right = joined[:k], joined[k:]
            if left in ids and right in ids:
                found.append((-score, ids[joined], ids[left], ids[right], left, right))
    found.sort()
    return [[left, right] for *_, left, right in found]
