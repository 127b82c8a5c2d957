"""The small byte-level BPE of models trained from scratch: id layout, special tokens, lossless
round trips in every lalm-synth language, and the same ids through transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lalm.data.manifest import AudioRef, Example, ExampleTask, ExampleTurn
from lalm.errors import TokenizerError
from lalm.prompt import QWEN2_AUDIO, QWEN2_AUDIO_SPECIAL_TOKENS, tag
from lalm.training.bpe import SPECIAL_TOKENS, corpus, train_tokenizer

TEXTS = ["Transcribe the speech.", "Turn on the lights in the kitchen.", "窓を開けてください。",
         "창문을 열어 주세요.", "请打开窗户。", "Öffnen Sie bitte das Fenster.",
         "Abre la ventana, por favor.", "Ouvrez la fenêtre, s'il vous plaît.",
         "Apri la finestra, per favore.", "Which language is spoken? Choose one of: French."] * 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bpe")
    train_tokenizer(TEXTS, out, vocab_size=400, min_frequency=2)
    return out


def test_specials_follow_the_ranks_in_order(folder: Path) -> None:
    from lalm.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    assert tok.family is QWEN2_AUDIO
    first = len(tok) - len(SPECIAL_TOKENS)
    assert [tok.special_tokens[s] for s in SPECIAL_TOKENS] == list(range(first, len(tok)))
    assert tok.eod_id == first and tok.audio_pad_id == first + 3
    assert 256 <= first <= 400


def test_chatml_audio_and_task_tags_are_single_tokens(folder: Path) -> None:
    from lalm.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    for token in (*QWEN2_AUDIO_SPECIAL_TOKENS, tag("startoftranscript"), tag("en"),
                  tag("transcribe"), tag("notimestamps"), tag("question"), tag("answer")):
        assert tok.encode(token) == [tok.special_tokens[token]]
    for text in (tag("1.25"), tag("midi_pitch_60"), "<audio>"):  # left out on purpose
        ids = tok.encode(text)
        assert len(ids) > 1 and tok.decode(ids) == text


def test_round_trip_is_lossless_even_for_unseen_characters(folder: Path) -> None:
    from lalm.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    for text in [*TEXTS[:10], "Ελληνικά 🎵 naïve — 42", "  two  spaces\nnewline\t"]:
        assert tok.decode(tok.encode(text)) == text
    seen = tok.encode(TEXTS[1])
    assert len(seen) < len(TEXTS[1].encode()) / 2  # merges were learned


def test_transformers_reads_the_same_ids(folder: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from lalm.tokenizer import load_tokenizer

    tok = load_tokenizer(folder)
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    text = f"{tag('im_start')}user\n{TEXTS[2]} {tag('AUDIO')}{tag('im_end')}"
    assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["eos_token"] == tag("im_end") and config["pad_token"] == tag("endoftext")


def test_corpus_renders_prompts_and_targets_without_specials() -> None:
    task = ExampleTask("asr", "en", "en", instruction="Transcribe the speech.")
    chat = Example("c", (AudioRef("b.wav"),), ExampleTask("chat", instruction="Chat."), "Fine.",
                   messages=(ExampleTurn("user", "How are you?", (0,)),
                             ExampleTurn("assistant", "Fine.")))
    pieces = list(corpus([Example("a", (AudioRef("a.wav"),), task, "hello there"), chat]))
    assert "hello there" in pieces and "Fine." in pieces
    assert any("Transcribe the speech." in p for p in pieces)
    assert any("How are you?" in p for p in pieces)
    assert not any(s in p for p in pieces for s in SPECIAL_TOKENS)


def test_bad_arguments_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_tokenizer(TEXTS, tmp_path, vocab_size=100)
    with pytest.raises(TokenizerError, match="no text"):
        train_tokenizer(["", ""], tmp_path)
