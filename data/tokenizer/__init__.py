"""Tokenizers: byte-level BPE (GPT-2 compatible, the default), classic char BPE with </w>, and sentencepiece.

    from data.tokenizer import train_tokenizer, load_tokenizer, Tokenizer
    tok = train_tokenizer(cfg, ["train.parquet"]);  tok.save("tok/");  load_tokenizer("tok/")
"""

from data.tokenizer.config import TokenizerConfig
from data.tokenizer.bpe_tokenizer import BPETokenizer
from data.tokenizer.char_bpe import CharBPETokenizer
from data.tokenizer.errors import TokenizerFileError, TrainingError
from data.tokenizer.tokenizer import Tokenizer
from data.tokenizer.train import load_tokenizer, train_tokenizer

__all__ = [
    "BPETokenizer",
    "CharBPETokenizer",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerFileError",
    "TrainingError",
    "load_tokenizer",
    "train_tokenizer",
]
