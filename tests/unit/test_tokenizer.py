"""Tokenizer: real special ids of both families, round trips, NFC, decode of padded ids, bad files."""

from __future__ import annotations

import base64
import unicodedata
from pathlib import Path

import pytest
from conftest import shared_fixture
from hypothesis import given, settings
from hypothesis import strategies as st

from lalm.errors import TokenizerError
from lalm.prompt import (
    QWEN2_AUDIO,
    QWEN2_AUDIO_SPECIAL_TOKENS,
    QWEN_AUDIO,
    QWEN_AUDIO_SPECIAL_TOKENS,
)
from lalm.tokenizer import OUT_OF_VOCAB_FORMAT, Tokenizer, load_tokenizer

# Ids from the official QWenTokenizer (the fixture goldens' prompts) and its AUDIO_ST order.
V1_IDS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
    "<|extra_0|>": 151646, "<|extra_204|>": 151850,
    "[[[AUDIO:modality]]]": 151851, "<|startoftranscript|>": 151852,
    "<|startofanalysis|>": 151853, "<|translate|>": 151854, "<|transcribe|>": 151855,
    "<|caption|>": 151856, "<|keyword|>": 151857, "<|unknown|>": 151858, "<|en|>": 151859,
    "<|zh|>": 151860, "<|de|>": 151861, "<|it|>": 151866, "<|zh_tr|>": 151867,
    "<|notimestamps|>": 151868, "<|sil|>": 151869, "<|timestamps|>": 151870,
    "<|0.00|>": 151871, "<|0.01|>": 151872, "<|2.33|>": 152104, "<|30.00|>": 154871,
    "<|caption_audiocaps|>": 154872, "<|caption_clotho|>": 154873, "<|caption_plain|>": 154875,
    "<|itn|>": 154876, "<|wo_itn|>": 154877, "<|emotion_recognition|>": 154887,
    "<|note_analysis|>": 154889, "<|pitch|>": 154890, "<|midi_pitch_0|>": 154891,
    "<|midi_pitch_127|>": 155018, "<|velocity|>": 155019, "<|midi_velocity_127|>": 155147,
    "<|sonic|>": 155148, "<|instrument|>": 155149, "<|question|>": 155152,
    "<|answer|>": 155153, "<|scene|>": 155155, "<|vocal_classification|>": 155157,
    "<|speech_edit|>": 155162, "<audio>": 155163, "</audio>": 155164,
}
V2_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
          "<|AUDIO|>": 151646, "<|audio_bos|>": 151647, "<|audio_eos|>": 151648}


@pytest.mark.parametrize("token,expected", sorted(V1_IDS.items(), key=lambda kv: kv[1]))
def test_v1_special_ids(v1_tokenizer: Tokenizer, token: str, expected: int) -> None:
    assert v1_tokenizer.token_id(token) == expected
    assert v1_tokenizer.encode(token) == [expected]
    assert v1_tokenizer.decode([expected]) == token


def test_v1_table_shape(v1_tokenizer: Tokenizer) -> None:
    assert len(v1_tokenizer) == 155165 and len(QWEN_AUDIO_SPECIAL_TOKENS) == 3 + 205 + 3314
    assert len(set(QWEN_AUDIO_SPECIAL_TOKENS)) == len(QWEN_AUDIO_SPECIAL_TOKENS)
    assert v1_tokenizer.family is QWEN_AUDIO
    v1 = v1_tokenizer
    assert (v1.eod_id, v1.im_start_id, v1.im_end_id) == (151643, 151644, 151645)
    assert (v1.audio_start_id, v1.audio_pad_id, v1.audio_end_id) == (155163, 151851, 155164)
    assert v1_tokenizer.audio_slot_ids == {155163, 151851, 155164}
    assert v1_tokenizer.stop_ids == (151643, 151645, 151644)


def test_v2_special_ids(v2_tokenizer: Tokenizer) -> None:
    assert len(v2_tokenizer) == 151649 and v2_tokenizer.family is QWEN2_AUDIO
    assert v2_tokenizer.special_tokens == V2_IDS and tuple(V2_IDS) == QWEN2_AUDIO_SPECIAL_TOKENS
    v2 = v2_tokenizer
    assert (v2.audio_start_id, v2.audio_pad_id, v2.audio_end_id) == (151647, 151646, 151648)
    assert v2_tokenizer.audio_slot_ids == {151646}
    with pytest.raises(TokenizerError, match="no special token '<|startoftranscript|>'"):
        v2_tokenizer.token_id("<|startoftranscript|>")
    tag = "<|startoftranscript|>"
    assert v2_tokenizer.encode(tag) == v2_tokenizer.encode(tag, set())


TEXTS = [
    "", "Hello, world!", "turn left at the next light", "  leading and   inner  spaces  ",
    "line one\nline two\r\n\n\ttab", "数字 1234567 和中文", "Grüße aus Köln — «ça va?»",
    "日本語とEnglishのmix", "emoji 👩‍👩‍👧 🇩🇪 ✋🏽 1️⃣", "I'm we'll THEY'D", "\u3000\u00a0x",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_backends_agree(v1_tokenizer: Tokenizer, v2_tokenizer: Tokenizer,
                                       text: str) -> None:
    ids = v1_tokenizer.encode(text)
    assert v1_tokenizer.decode(ids) == text
    assert v2_tokenizer.encode(text) == ids  # tiktoken and the tokenizers library, same BPE
    assert v2_tokenizer.decode(ids) == text


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_random_text_round_trip(v1_tokenizer: Tokenizer, v2_tokenizer: Tokenizer,
                                text: str) -> None:
    nfc = unicodedata.normalize("NFC", text)
    ids = v1_tokenizer.encode(text, allowed_special=set())
    assert v1_tokenizer.decode(ids) == nfc
    assert v2_tokenizer.encode(text, allowed_special=set()) == ids


def test_nfc_normalisation(v1_tokenizer: Tokenizer, v2_tokenizer: Tokenizer) -> None:
    decomposed, composed = "Cafe\u0301 Zu\u0308rich", "Café Zürich"
    assert v1_tokenizer.encode(decomposed) == v1_tokenizer.encode(composed)
    assert v2_tokenizer.encode(decomposed) == v2_tokenizer.encode(composed)


def test_allowed_special(v1_tokenizer: Tokenizer) -> None:
    text = "<|im_start|>user\n<|en|>hi<|im_end|>"
    assert v1_tokenizer.encode(text)[0] == 151644 and 151859 in v1_tokenizer.encode(text)
    only_en = v1_tokenizer.encode(text, allowed_special={"<|en|>"})
    assert 151859 in only_en and 151644 not in only_en and 151645 not in only_en
    plain = v1_tokenizer.encode(text, allowed_special=set())
    assert max(plain) < 151643 and v1_tokenizer.decode(plain) == text
    with pytest.raises(TokenizerError, match="not special tokens"):
        v1_tokenizer.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(TokenizerError, match="takes a str"):
        v1_tokenizer.encode(b"bytes")  # type: ignore[arg-type]


def test_decode_padded_vocab_rows(v1_tokenizer: Tokenizer, v2_tokenizer: Tokenizer) -> None:
    ids = [64, 155677, 151859, 155946, 65]
    expected = "a" + OUT_OF_VOCAB_FORMAT.format(155677) + "<|en|><|vocab_pad:155946|>b"
    assert v1_tokenizer.decode(ids) == expected
    assert v1_tokenizer.decode(ids, skip_special=True) == "ab"
    assert v2_tokenizer.decode([64, 151646, 151649, 65]) == "a<|AUDIO|><|vocab_pad:151649|>b"
    assert v2_tokenizer.decode([64, 151646, 151649, 65], skip_special=True) == "ab"
    with pytest.raises(TokenizerError, match="negative token id -1"):
        v1_tokenizer.decode([1, -1])


def test_decode_split_utf8_replaced(v1_tokenizer: Tokenizer) -> None:
    ids = v1_tokenizer.encode("\U00013000")  # a hieroglyph: several byte tokens
    assert len(ids) > 1 and v1_tokenizer.decode(ids[:1]) == "\ufffd"


def test_load_tokenizer_picks_by_content(qwen_tiktoken: Path, tmp_path: Path) -> None:
    hf_dir = shared_fixture("qwen2_audio_tokenizer")
    assert load_tokenizer(qwen_tiktoken.parent).family is QWEN_AUDIO
    assert load_tokenizer(qwen_tiktoken).family is QWEN_AUDIO
    assert load_tokenizer(hf_dir).family is QWEN2_AUDIO
    assert load_tokenizer(hf_dir / "tokenizer.json").family is QWEN2_AUDIO
    with pytest.raises(TokenizerError, match=f"{tmp_path} has neither qwen.tiktoken"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def test_default_bpe_comes_from_assets(qwen_tiktoken: Path, monkeypatch) -> None:
    import lalm.assets

    monkeypatch.setattr(lalm.assets, "asset_path", lambda name: qwen_tiktoken)
    assert load_tokenizer(None).source == qwen_tiktoken


def _rank_line(token: bytes, rank: int) -> str:
    return f"{base64.b64encode(token).decode()} {rank}\n"


@pytest.mark.parametrize("content,message", [
    ("", "holds no BPE ranks"),
    ("not base64!! 0\n", "line 1: not a tiktoken rank line"),
    (_rank_line(b"a", 0) + "YQ==\n", "line 2: not a tiktoken rank line"),
    (_rank_line(b"a", 0) + _rank_line(b"b", 2), "ranks are not 0..1"),
    (_rank_line(b"a", 0) + _rank_line(b"b", "x"), "line 2"),  # type: ignore[arg-type]
])
def test_bad_tiktoken_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "qwen.tiktoken"
    path.write_text(content)
    with pytest.raises(TokenizerError, match=message) as err:
        load_tokenizer(tmp_path)
    assert str(path) in str(err.value)


def test_bad_hf_files(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text('{"version": "1.0", "model": 5}')
    with pytest.raises(TokenizerError, match=f"cannot load tokenizer file {path}"):
        load_tokenizer(tmp_path)
    with pytest.raises(TokenizerError, match="cannot read tokenizer file"):
        Tokenizer.from_tiktoken(tmp_path / "absent.tiktoken")


def test_tokenizer_without_audio_specials_is_rejected(tmp_path: Path) -> None:
    import tokenizers
    from tokenizers.models import WordLevel

    hf = tokenizers.Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="not a tokenizer of a known family"):
        load_tokenizer(tmp_path)
