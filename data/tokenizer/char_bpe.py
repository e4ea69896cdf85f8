"""Classic BPE (kind char_bpe, Sennrich et al. 2016): the base symbols are characters and the last
character of a word carries </w>, so "low lower" starts as  l o w</w>  l o w e r</w>.

Words are the runs of non-space characters (pattern "whitespace"); decoding joins the tokens, turns
each </w> into a space and drops the last one. Characters outside the trained alphabet become
<unk> (special_tokens[3]). Everything else (merging, caching, files) is BPETokenizer's.
"""

from __future__ import annotations

from typing import Any

from data.tokenizer.bpe import learn_merges
from data.tokenizer.bpe_tokenizer import BPETokenizer
from data.tokenizer.config import TokenizerConfig

END_OF_WORD = "</w>"


class CharBPETokenizer(BPETokenizer):
    """Characters + </w> BPE: 'low' -> symbols 'l', 'o', 'w</w>' -> merges as trained."""

    kind = "char_bpe"

    def _init_symbols(self) -> None:
        self._unk_id = self._special_ids[self.special_tokens[3]] if len(self.special_tokens) > 3 else None
        self._id_bytes = [t.encode("utf-8") for t in self.tokens]

    def _base_ids(self, piece: str) -> list[int]:
        """'low' -> ids of 'l', 'o', 'w</w>'; a character outside the alphabet is <unk> (None without one)."""
        symbols = list(piece)
        symbols[-1] += END_OF_WORD
        get = self._token_id.get
        return [get(s, self._unk_id) for s in symbols]

    def _initial_ids(self, piece: str) -> list[int]:
        ids = self._base_ids(piece)
        if None in ids:
            raise ValueError(f"char_bpe: {piece!r} has characters outside the alphabet and there is no <unk>")
        return ids

    def _join(self, ids: list[int]) -> bytes:
        # "</w>" ends a word; words are joined with one space.
        text = "".join(self.tokens[i] for i in ids).replace(END_OF_WORD, " ")
        return text[:-1].encode("utf-8") if text.endswith(" ") else text.encode("utf-8")

    def _show(self, i: int) -> str:
        return repr(self.tokens[i])

    def hf_json(self) -> dict[str, Any]:
        """BPETokenizer's tokenizer.json with words split on whitespace (HF's WhitespaceSplit drops the
        spaces), no byte-level step, and </w> as the end-of-word suffix."""
        out = super().hf_json()
        splits = out["pre_tokenizer"]["pretokenizers"]
        splits[0] = {"type": "WhitespaceSplit"}
        splits.pop()  # the ByteLevel step
        out["decoder"] = {"type": "BPEDecoder", "suffix": END_OF_WORD}
        out["model"]["unk_token"] = None if len(self.special_tokens) < 4 else self.special_tokens[3]
        out["model"]["end_of_word_suffix"] = END_OF_WORD
        return out

    # ---- training ----------------------------------------------------------------------------

    @classmethod
    def pattern_name_of(cls, cfg: TokenizerConfig) -> str:
        return "whitespace"

    @classmethod
    def check_config(cls, cfg: TokenizerConfig) -> None:
        if len(cfg.special_tokens) < 4:
            raise ValueError("tokenizer.kind char_bpe needs an unknown token: tokenizer.special_tokens[3] (e.g. '<unk>')")

    @classmethod
    def learn(cls, keys: list[bytes], counts: list[int], cfg: TokenizerConfig, backend: str) -> tuple[list, list, list]:
        """Pre-token bytes and counts -> (base: specials then the alphabet, tokens grown from it, merges as id pairs)."""
        specials = list(cfg.special_tokens)
        S = len(specials)
        # Symbols are characters; the last one of a word carries </w> (Sennrich et al.'s "low</w>").
        texts = [k.decode("utf-8", "surrogateescape") for k in keys]
        keys.clear()
        alphabet = sorted({c for t in texts for c in t[:-1]} | {t[-1] + END_OF_WORD for t in texts})
        if S + len(alphabet) > cfg.vocab_size:
            raise ValueError(
                f"tokenizer.vocab_size {cfg.vocab_size} is smaller than {S} special tokens + the corpus's "
                f"{len(alphabet)} characters (with and without </w>); raise it or use kind byte_bpe"
            )
        base = list(specials) + alphabet
        sym_id = {s: i for i, s in enumerate(base)}
        words = [[sym_id[c] for c in t[:-1]] + [sym_id[t[-1] + END_OF_WORD]] for t in texts]
        tokens = list(base)
        return base, tokens, learn_merges(words, counts, tokens, cfg.vocab_size, cfg.min_frequency, backend=backend)

    @staticmethod
    def _names(tokens: list, n_specials: int) -> list[str]:
        """char_bpe's trained tokens are already str: the vocabulary's own names."""
        return list(tokens)
