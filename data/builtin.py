"""The built-in parallel corpus: numbers and dates in English words -> Chinese numerals and dates.

No download, fully deterministic from a seed, and learnable by the `tiny` model in minutes on two
CPU cores. The Chinese side exercises multi-byte UTF-8 (every CJK character is 3 bytes).

    >>> english_number(2045), chinese_number(2045)
    ('two thousand and forty-five', '二千零四十五')
    >>> english_date(2021, 3, 5), chinese_date(2021, 3, 5)
    ('March 5, 2021', '2021年3月5日')
"""

from __future__ import annotations

import calendar
import random
from collections.abc import Iterator

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ZH_DIGITS = "零一二三四五六七八九"
_MONTHS = list(calendar.month_name)[1:]  # locale-independent in the C locale: January..December

MAX_NUMBER = 999_999


def english_number(n: int) -> str:
    """British style, with 'and' before the last two digits: 105 -> 'one hundred and five'."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"english_number supports 0..{MAX_NUMBER}, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        head = _ONES[n // 100] + " hundred"
        return head if n % 100 == 0 else f"{head} and {english_number(n % 100)}"
    head = english_number(n // 1000) + " thousand"
    rest = n % 1000
    if rest == 0:
        return head
    return f"{head} and {english_number(rest)}" if rest < 100 else f"{head} {english_number(rest)}"


def _zh_section(x: int, leading: bool) -> str:
    """0 < x < 10000 in Chinese numerals; inner zero runs collapse to one 零; '十' alone leads 10..19."""
    out = []
    zero_pending = False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = (x // value) % 10
        if d == 0:
            zero_pending = bool(out)
            continue
        if zero_pending:
            out.append("零")
            zero_pending = False
        if value == 10 and d == 1 and leading and not out:
            out.append("十")  # 12 -> 十二, not 一十二
        else:
            out.append(_ZH_DIGITS[d] + unit)
    return "".join(out)


def chinese_number(n: int) -> str:
    """0 <= n <= 999,999 in Chinese numerals: 10 -> 十, 105 -> 一百零五, 120000 -> 十二万."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"chinese_number supports 0..{MAX_NUMBER}, got {n}")
    if n == 0:
        return "零"
    wan, rest = divmod(n, 10000)
    if wan == 0:
        return _zh_section(rest, leading=True)
    s = _zh_section(wan, leading=True) + "万"
    if rest:
        s += ("零" if rest < 1000 else "") + _zh_section(rest, leading=False)
    return s


def english_date(year: int, month: int, day: int) -> str:
    return f"{_MONTHS[month - 1]} {day}, {year}"


def chinese_date(year: int, month: int, day: int) -> str:
    return f"{year}年{month}月{day}日"


def generate_pairs(n: int, seed: int) -> Iterator[tuple[str, str]]:
    """Yield `n` (english, chinese) pairs; the same (n, seed) always gives the same pairs.

    Three in five are cardinal numbers whose digit count is uniform in 1..6 (so small and large
    numbers are equally common); the rest are calendar dates from 1900 to 2099.
    """
    rng = random.Random(seed)
    for _ in range(n):
        if rng.random() < 0.6:
            digits = rng.randint(1, 6)
            lo = 0 if digits == 1 else 10 ** (digits - 1)
            k = rng.randint(lo, 10**digits - 1)
            yield english_number(k), chinese_number(k)
        else:
            year, month = rng.randint(1900, 2099), rng.randint(1, 12)
            day = rng.randint(1, calendar.monthrange(year, month)[1])
            yield english_date(year, month, day), chinese_date(year, month, day)
