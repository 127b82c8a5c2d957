"""Text normalisation before scoring: the official cleanup, Whisper/Chinese normalisers, cn_tn."""

from __future__ import annotations

import pytest

from lalm.eval.chinese import normalize_chinese, number_to_chinese, verbalize_numbers
from lalm.eval.normalizers import evaluation_tokens, qwen2_normalize, strip_tags


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("<|en|>Hello , world !", "en", "Hello, world!"),
        ("  a\t\nb  ;c", "en", "a b;c"),
        ("<|startoftranscript|><|zh|>你 好 ，世界", "zh", "你好，世界"),
        ("no tags", "fr", "no tags"),
    ],
)
def test_strip_tags(text: str, language: str, expected: str) -> None:
    assert strip_tags(text, language) == expected


def test_evaluation_tokens_punctuation_and_case() -> None:
    # only tokens made entirely of punctuation go; attached punctuation stays
    assert evaluation_tokens("Hi , there. «» ok", remove_punctuation=True, characters=False) == [
        "hi", "there.", "ok"]
    assert evaluation_tokens("Hi , there.", remove_punctuation=False, characters=False) == [
        "hi", ",", "there."]
    chars = evaluation_tokens("你好 世界", remove_punctuation=True, characters=True)
    assert chars == list("你好世界")


def test_qwen2_english_is_normalised_twice() -> None:
    # Whisper's English normaliser writes "$25"; the basic normaliser that the official script
    # applies next drops the "$" (so "25" and "$25" score as equal).
    assert qwen2_normalize("It costs twenty five dollars.", "en") == "it costs 25"
    assert qwen2_normalize("Colour, hmm, Mr. Smith!", "en") == "color mister smith"


def test_qwen2_other_languages() -> None:
    assert qwen2_normalize("我們去食飯", "yue") == "我们去食饭"
    assert qwen2_normalize("C'est l'été !", "fr") == "c est l été "
    assert qwen2_normalize("今天是2019年3月5日。", "zh") == "今天是二零一九年三月五日 "


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("0", "零"), ("7", "七"), ("10", "十"), ("15", "十五"), ("20", "二十"), ("22", "二十二"),
        ("100", "一百"), ("110", "一百一十"), ("200", "两百"), ("1005", "一千零五"),
        ("1050", "一千零五十"), ("2000", "两千"), ("22000", "两万两千"), ("10050", "一万零五十"),
        ("100000", "十万"), ("1000200", "一百万零二百"), ("300000000", "三亿"),
        ("3.25", "三点二五"), ("0.5", "零点五"), ("12.0", "十二点零"),
    ],
)
def test_number_to_chinese_cardinals(number: str, expected: str) -> None:
    assert number_to_chinese(number) == expected


def test_number_to_chinese_digit_by_digit_and_errors() -> None:
    assert number_to_chinese("2019", use_units=False, liang=False) == "二零一九"
    with pytest.raises(ValueError, match="more than one dot"):
        number_to_chinese("1.2.3")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("今天是2019年3月5日", "今天是二零一九年三月五日"),  # date: year read digit by digit
        ("花了3.5元", "花了三点五元"),  # money
        ("电话13812345678找我", "电话一三八一二三四五六七八找我"),  # mobile number
        ("拨打010-12345678", "拨打零一零一二三四五六七八"),  # fixed line
        ("吃了3/4个", "吃了四分之三个"),  # fraction
        ("增长了50%，", "增长了百分之五十，"),  # percentage
        ("增长了12.5％", "增长了百分之十二点五"),  # full-width percent sign
        ("买了25个苹果", "买了二十五个苹果"),  # number before a measure word
        ("编号8848号", "编号八八四八号"),  # 4+ digit run read digit by digit
        ("第3名和第12", "第三名和第十二"),  # remaining numbers as cardinals
        ("P2P和B2B", "P2P和B2B"),  # letter-2-letter codes restored
    ],
)
def test_verbalize_numbers(text: str, expected: str) -> None:
    assert verbalize_numbers(text) == expected


def test_normalize_chinese_punctuation_to_spaces() -> None:
    assert normalize_chinese("你好，世界！“好”?") == "你好 世界  好  "
