"""Chinese text normalisation as Qwen2-Audio's ASR scorer applies it (speechio ``cn_tn``).

Qwen2-Audio's ``eval_audio/evaluate_asr.py`` normalises Chinese references and hypotheses with
the speechio "chinese_text_normalization" ``TextNorm`` (all options off), which is not on PyPI.
With every option off it does two things, reproduced here from their documented behaviour:

1. **Non-standard-word verbalisation** (`verbalize_numbers`): dates (``2019年3月5日`` ->
   ``二零一九年三月五日``), money (``3.5元`` -> ``三点五元``), mobile and fixed telephone numbers
   (read digit by digit), fractions (``3/4`` -> ``四分之三``), percentages (``50%`` ->
   ``百分之五十``), a number before a measure word (cardinal), runs of 4-32 digits (read digit by
   digit), any remaining number (cardinal), and finally ``P二P``-style letter-digit-letter codes
   are restored to ``P2P``. Each rule finds all its matches first, then rewrites the *first
   occurrence* of each matched string in turn (the reference's behaviour, kept because it can
   differ from rewriting at the match position).
2. **Punctuation to spaces**: every ASCII punctuation mark and the Chinese punctuation set of
   the zhon project becomes a space (`CHINESE_PUNCTUATION`).

Cardinals use the "mid" numbering system (万 = 10^4, 亿 = 10^8, 兆 = 10^12, ...), ``两`` for a
2 directly before 百/千/万/... when not preceded by a digit, and drop the leading ``一`` of
``一十...`` (``15`` -> ``十五``).
"""

from __future__ import annotations

import re
import string

_DIGITS = "零一二三四五六七八九"
_LIANG = "两"
_POINT = "点"
# Units below 万 are powers 1-3 (十百千) plus 万 = 10^4; larger units step by 10^4 ("mid" system).
_UNITS: tuple[tuple[int, str], ...] = (
    (1, "十"), (2, "百"), (3, "千"), (4, "万"),
    *((8 + 4 * i, u) for i, u in enumerate("亿兆京垓秭穰沟涧正载")),
)

CHINESE_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗"
    "〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-"
)
_PUNCT_TO_SPACE = str.maketrans({c: " " for c in CHINESE_PUNCTUATION + string.punctuation})

# Measure words after which a number is read as a cardinal (existence of one is all that matters).
_MEASURE_CHARS = (
    "匹张座回场尾条个首阙阵网炮顶丘棵只支袭辆挑担颗壳窠曲墙群腔砣客贯扎捆刀令打手罗坡山岭江溪钟队"
    "单双对出口头脚板跳枝件贴针线管名位身堂课本页家户层丝毫厘分钱两斤铢石钧锱忽寸尺丈里寻常铺程"
    "撮勺合升斗盘碗碟叠桶笼盆盒杯斛锅簋篮罐瓶壶卮盏箩箱煲啖袋钵年月日季刻时周天秒旬纪岁世更夜春夏"
    "秋冬代伏辈丸泡粒幢堆根道面片块"
)
_MEASURE = f"(?:[{_MEASURE_CHARS}]|[千微][克米])"
_SCALE = "(?:亿|千万|百万|万|千|百)"
_MONEY_UNIT = f"(?:{_SCALE}|(?:亿|千万|百万|万|千|百|)元|(?:亿|千万|百万|万|千|百|)块|角|毛|分)"

_DATE = re.compile(r"\D+((?:(?:[089]\d|(?:19|20)\d{2})年)?(?:\d{1,2}月(?:\d{1,2}[日号])?)?)")
_MONEY = re.compile(rf"\D+((?:\d+(?:\.\d+)?)[多余几]?{_MONEY_UNIT}(?:\d{_MONEY_UNIT}?)?)")
_MOBILE = re.compile(r"\D((?:\+?86 ?)?1(?:[38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_FIXED_LINE = re.compile(r"\D((?:0(?:10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION = re.compile(r"(\d+/\d+)")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?%)")
_COUNTED = re.compile(rf"(\d+(?:\.\d+)?)[多余几]?{_MEASURE}")
_DIGIT_RUN = re.compile(r"(\d{4,32})")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")
_LETTER_TWO_LETTER = re.compile(r"([a-zA-Z]+)二([a-zA-Z]+)")
_DATE_PARTS = re.compile(r"(?:(\d+)年)?(?:(\d+)月(?:(\d+)([日号]))?)?")


def _spell_integer(digits: str) -> list[int | str]:
    """Symbols of an integer string: ints for digits, unit characters for units (recursive)."""
    stripped = digits.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        # a zero marks skipped places ("1005" -> 一千零五)
        return [0, int(stripped)] if len(stripped) != len(digits) else [int(stripped)]
    power, unit = next(u for u in reversed(_UNITS) if u[0] < len(stripped))
    return [*_spell_integer(digits[:-power]), unit, *_spell_integer(stripped[-power:])]


def _power(symbol: int | str) -> int | None:
    return next((p for p, u in _UNITS if u == symbol), None)


def number_to_chinese(number: str, *, use_units: bool = True, liang: bool = True) -> str:
    """Read a decimal number string in Chinese.

    Args:
        number: ASCII digits with at most one ``.`` (e.g. ``"2019"``, ``"3.25"``).
        use_units: read the integer part with units (``2019`` -> 两千零一十九); False reads it
            digit by digit (二零一九), as for years, codes and telephone numbers.
        liang: write ``两`` for a 2 right before a unit above 十 that no digit precedes.

    Returns:
        The Chinese reading, e.g. ``"三点二五"``; ``"十五"`` for ``"15"`` (no leading 一 before 十).

    Raises:
        ValueError: the string has more than one dot.
    """
    parts = number.split(".")
    if len(parts) > 2:
        raise ValueError(f"number {number!r} has more than one dot")
    integer, decimals = parts[0], (parts[1] if len(parts) == 2 else "")
    symbols: list[int | str] = (
        _spell_integer(integer) if use_units and len(integer) > 1 else [int(c) for c in integer]
    )
    if decimals:
        symbols += [_POINT, *(int(c) for c in decimals)]
    text = []
    for i, s in enumerate(symbols):
        if isinstance(s, int):
            nxt = _power(symbols[i + 1]) if i + 1 < len(symbols) else None
            prev = symbols[i - 1] if i > 0 else None
            prev_ok = prev is None or (_power(prev) is not None and _power(prev) != 1)
            use_liang = liang and s == 2 and nxt is not None and nxt != 1 and prev_ok
            text.append(_LIANG if use_liang else _DIGITS[s])
        else:
            text.append(s)
    result = "".join(text)
    if result.startswith(_POINT):
        return _DIGITS[0] + result
    if len(result) >= 2 and result[0] == "一" and result[1] == "十":
        return result[1:]
    return result


def _cardinal(number: str) -> str:
    return number_to_chinese(number)


def _digit_string(number: str) -> str:
    return number_to_chinese(number, use_units=False, liang=False)


def _date(text: str) -> str:
    year, month, day, day_suffix = _DATE_PARTS.fullmatch(text).groups()  # type: ignore[union-attr]
    out = f"{_digit_string(year)}年" if year is not None else ""
    if month is not None:
        out += f"{_cardinal(month)}月"
        if day is not None:
            out += _cardinal(day) + day_suffix
    return out


def _money(text: str) -> str:
    for number in _NUMBER.findall(text):
        text = text.replace(number, _cardinal(number), 1)
    return text


def _mobile(text: str) -> str:
    return "".join(_digit_string(part) for part in text.strip("+").split())


def _fixed_line(text: str) -> str:
    return "".join(_digit_string(part) for part in text.split("-"))


def _fraction(text: str) -> str:
    numerator, denominator = text.split("/")
    return f"{_cardinal(denominator)}分之{_cardinal(numerator)}"


def _percent(text: str) -> str:
    return "百分之" + _cardinal(text.strip().strip("%"))


# (pattern, rewrite of its first group), applied in this order.
_RULES = (
    (_DATE, _date),
    (_MONEY, _money),
    (_MOBILE, _mobile),
    (_FIXED_LINE, _fixed_line),
    (_FRACTION, _fraction),
    (_PERCENT, _percent),
    (_COUNTED, _cardinal),
    (_DIGIT_RUN, _digit_string),
    (_NUMBER, _cardinal),
)


def verbalize_numbers(text: str) -> str:
    """Rewrite dates, money, telephone numbers, fractions, percentages and numbers in Chinese.

    Args:
        text: raw Chinese text, e.g. ``"2019年3月5日花了3.5元"``.

    Returns:
        The text with every number read out, e.g. ``"二零一九年三月五日花了三点五元"``.
    """
    # the anchors let the \D-prefixed rules match at either end
    text = "^" + text.replace("％", "%") + "$"
    for pattern, rewrite in _RULES:
        for found in pattern.findall(text):
            text = text.replace(found, rewrite(found), 1)
    for letters, after in _LETTER_TWO_LETTER.findall(text):
        text = text.replace(f"{letters}二{after}", f"{letters}2{after}", 1)
    return text.lstrip("^").rstrip("$")


def normalize_chinese(text: str) -> str:
    """speechio ``TextNorm()`` with all options off: verbalise numbers, punctuation to spaces.

    Args:
        text: Chinese text.

    Returns:
        The normalised text; spaces are kept (the WER scorer splits into characters later).
    """
    return verbalize_numbers(text).translate(_PUNCT_TO_SPACE)
