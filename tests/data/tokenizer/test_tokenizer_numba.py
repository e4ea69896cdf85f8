"""The compiled merge loop gives exactly the merges of the Python reference loop."""

from __future__ import annotations

import pytest

from data.tokenizer import TokenizerConfig, train_tokenizer
from data.tokenizer.bpe import learn_merges, merge_backend

pytest.importorskip("numba", reason="numba is not installed; the Python merge loop is used")


def both(words, counts, tokens, vocab_size, min_frequency):
    t_py, t_nb = list(tokens), list(tokens)
    m_py = learn_merges([list(w) for w in words], counts, t_py, vocab_size, min_frequency, backend="python")
    m_nb = learn_merges([list(w) for w in words], counts, t_nb, vocab_size, min_frequency, backend="numba")
    return m_py, m_nb, t_py, t_nb


@pytest.mark.parametrize(
    "words,counts,tokens,vocab_size",
    [
        ([[0, 1, 2], [0, 1]], [5, 2], [b"a", b"b", b"c"], 10),  # by hand: (a,b) then (ab,c)
        ([[0, 0, 0, 0]], [1], [b"a"], 10),  # overlapping pairs
        ([[2, 3], [0, 1]], [3, 3], [b"a", b"b", b"c", b"d"], 5),  # tie-break
        ([[0, 4], [3, 2]], [1, 1], [b"a", b"b", b"c", b"ab", b"bc"], 10),  # a result that already exists
        ([[1, 2], [2, 3]], [2, 1], ["<s>", "a", "b", "c"], 10),  # str symbols (char_bpe)
    ],
)
def test_known_answers_identical(words, counts, tokens, vocab_size):
    m_py, m_nb, t_py, t_nb = both(words, counts, tokens, vocab_size, 1)
    assert m_py == m_nb and t_py == t_nb


@pytest.mark.parametrize("kind", ["byte_bpe", "char_bpe"])
def test_trained_tokenizers_identical(corpus_file, kind):
    base = dict(kind=kind, vocab_size=2500, num_workers=1, min_frequency=2)
    py = train_tokenizer(TokenizerConfig(merge_backend="python", **base), [str(corpus_file)])
    nb = train_tokenizer(TokenizerConfig(merge_backend="numba", **base), [str(corpus_file)])
    assert nb.train_stats["merge_backend"] == "numba" and py.train_stats["merge_backend"] == "python"
    assert py.merges == nb.merges and py.tokens == nb.tokens and py.fingerprint == nb.fingerprint


def test_auto_choice():
    assert merge_backend("auto", 10) == "python"
    assert merge_backend("auto", 10**6) == "numba"
    with pytest.raises(ValueError, match="merge_backend must be"):
        merge_backend("fast", 10)


def test_encoding_never_loads_numba(small_tok, tmp_path):
    """Encoding is plain Python (numba lost there even when cached), so a cold `tpipe translate`
    never pays numba's import and compilation, and loading a model writes no numba cache anywhere."""
    import subprocess
    import sys
    from pathlib import Path

    small_tok.save(tmp_path / "tok")
    code = (
        "import sys; from data.tokenizer import load_tokenizer; tok = load_tokenizer(sys.argv[1]);"
        "ids = tok.encode_batch(['The quick brown fox jumps over the lazy dog, again and again.'] * 3 + ['中文 x' * 50]);"
        "assert all(ids); print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite') "
        "or m.endswith('_bpe_numba')))"
    )
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tok")], capture_output=True, text=True,
                          cwd=root, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(tmp_path)},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_compiled_code_cached_in_the_user_cache_dir(tmp_path):
    """numba's cache lives under ~/.cache/tpipe/numba ($XDG_CACHE_HOME), never beside the source file,
    which may be a model's code inside an MLflow artifact store."""
    import subprocess
    import sys
    from pathlib import Path

    code = "import data.tokenizer._bpe_numba as m; print(m._learn._cache._cache_path)"
    root = Path(__file__).resolve().parents[3]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(str(tmp_path / "xdg" / "tpipe" / "numba"))
