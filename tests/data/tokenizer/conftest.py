"""Fixtures for the tokenizer tests: small corpora written to tmp, a trained tokenizer, a local Ray."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from data.tokenizer import TokenizerConfig, train_tokenizer

# Words from several scripts, so that byte-level BPE sees 1-, 2-, 3- and 4-byte characters.
WORDS = (
    "the of and to in is that for it as with was on be at by this had not are but from or have an they "
    "which one you were her all she there would their we him been has when who will more no if out so "
    "said what up its about into than them can only other new some could time these two may then do "
    "über straße größe café naïve façade déjà año niño ça été "
    "привет мир язык словарь токен данные обучение модель "
    "中文 字符 机器 翻译 数据 训练 模型 语言 日本語 東京 한국어 서울 "
    "مرحبا عالم لغة Γειά κόσμος שלום עולם नमस्ते दुनिया "
    "🙂 🚀 👩‍💻 🇩🇪 e\u0301 a\u0308 n\u0303 "
    "don't it's we're I've you'll he'd 3.14 2024 1,000,000 $5 100% a+b x=y (paren) [bracket] {brace} <tag> #hash @at"
).split()


def varied_text(n_bytes: int, seed: int = 0) -> str:
    """Deterministic multi-script text with punctuation, digits, whitespace runs, tabs and newlines."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < n_bytes:
        k = rng.randint(1, 14)
        words = [rng.choice(WORDS) for _ in range(k)]
        if rng.random() < 0.1:
            words.insert(rng.randint(0, k), rng.choice(["  ", "\t", "   ", " \u00a0 ", "\u3000"]))
        if rng.random() < 0.05:
            words.append(str(rng.randint(0, 10**9)))
        line = " ".join(words) + rng.choice([".", "!", "?", "", ",", " ...", "  "])
        out.append(line)
        size += len(line.encode("utf-8")) + 1
    return "\n".join(out) + "\n"


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    """About 200 KB of varied text, one text per line."""
    p = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    p.write_text(varied_text(200_000, seed=1), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def small_tok(corpus_file):
    """A byte_bpe tokenizer with 600 tokens trained in-process on corpus_file."""
    return train_tokenizer(TokenizerConfig(vocab_size=600, num_workers=1), [str(corpus_file)])


@pytest.fixture
def ray2(ray_local):
    """The session's real local Ray with 2 CPUs (tests/data/conftest.py starts and stops it)."""
    return ray_local


GPT2_SDIST = "openai-whisper==20250625"


@pytest.fixture(scope="session")
def gpt2_ranks_file(tmp_path_factory) -> Path:
    """GPT-2's ranks (gpt2.tiktoken): $TPIPE_GPT2_RANKS, the bench cache, or `pip download` of openai-whisper's sdist."""
    env = os.environ.get("TPIPE_GPT2_RANKS")
    if env and Path(env).is_file():
        return Path(env)
    cached = Path(os.environ.get("TPIPE_BENCH_DATA", Path.home() / ".cache" / "tpipe-bench")) / "gpt2.tiktoken"
    if cached.is_file():
        return cached
    tmp = tmp_path_factory.mktemp("whisper")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(tmp), GPT2_SDIST],
            check=True, capture_output=True, timeout=180,
        )
        sdist = next(tmp.glob("openai_whisper-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
            data = tar.extractfile(member).read()
    except (subprocess.SubprocessError, OSError, StopIteration, tarfile.TarError) as e:
        pytest.skip(f"GPT-2 ranks unavailable: set TPIPE_GPT2_RANKS, or let `pip download {GPT2_SDIST}` reach a registry ({e})")
    out = tmp / "gpt2.tiktoken"
    out.write_bytes(data)
    return out


@pytest.fixture(scope="session")
def make_text():
    """varied_text(n_bytes, seed) for tests that need more corpora."""
    return varied_text
