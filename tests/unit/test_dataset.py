"""Training items and batches: ids/labels per family, features, collate, batched = single,
DataLoader workers, and a lalm-synth set from generation to batches."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from lalm import prompt as P
from lalm.audio import SAMPLE_RATE, audio_token_count, load_audio, log_mel_spectrogram
from lalm.config import ModelConfig
from lalm.data.check import check_manifest
from lalm.data.collate import Collator, collate, model_inputs, pack_items
from lalm.data.dataset import AudioTextDataset, load_clip
from lalm.data.manifest import AudioRef, Example, ExampleTask, ExampleTurn, TimedWord, read_manifest
from lalm.data.render import render_prompt
from lalm.data.sampler import BucketBatchSampler
from lalm.errors import DataError
from lalm.prompt import QWEN2_AUDIO, QWEN_AUDIO, FamilySpec
from lalm.testing.models import random_model
from lalm.tokenizer import Tokenizer, load_tokenizer

N_MELS = {QWEN_AUDIO: 80, QWEN2_AUDIO: 128}


@functools.cache
def _load(path: Path) -> Tokenizer:
    return load_tokenizer(path)


@pytest.fixture
def tokenizers(qwen_tiktoken, qwen2_tokenizer_dir) -> dict[FamilySpec, Tokenizer]:
    """Both real tokenizers, loaded once per test session."""
    return {QWEN_AUDIO: _load(qwen_tiktoken), QWEN2_AUDIO: _load(qwen2_tokenizer_dir)}


@pytest.fixture
def clips(tmp_path: Path, v1_fixture: Path) -> Path:
    """tmp_path with the fixture's real speech (a.wav, b.wav) and a 3 s 22.05 kHz chord."""
    for name in ("a.wav", "b.wav"):
        shutil.copy(v1_fixture / name, tmp_path / name)
    t = np.arange(3 * 22050) / 22050
    chord = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) / 4
    sf.write(tmp_path / "chord.wav", chord.astype(np.float32), 22050, subtype="PCM_16")
    return tmp_path


def _examples() -> list[Example]:
    asr = ExampleTask("asr", "en", "en", instruction="Transcribe the speech.")
    words = (TimedWord(None, 0.0, 0.4), TimedWord("hello", 0.4, 0.9), TimedWord("there", 1.0, 1.5))
    return [
        Example("asr", (AudioRef("a.wav"),), asr, "hello there"),
        Example("srwt", (AudioRef("b.wav"),), ExampleTask(
            "srwt", "en", "en", timestamps=True, instruction="Transcribe with word times."),
            "hello there", words=words),
        Example("window", (AudioRef("chord.wav", 0.5, 1.25),),
                ExampleTask("chord_quality", instruction="Which chord is this?"), "major"),
        Example("chat", (AudioRef("a.wav"), AudioRef("chord.wav")),
                ExampleTask("chat", instruction="And this one?"), "A chord.",
                messages=(ExampleTurn("user", "What is this?", (0,)),
                          ExampleTurn("assistant", "Speech."),
                          ExampleTurn("user", "And this one?", (1,)),
                          ExampleTurn("assistant", "A chord."))),
        Example("text", (), ExampleTask("text_chat", instruction="Say hi."), "Hi.",
                messages=(ExampleTurn("user", "Say hi."), ExampleTurn("assistant", "Hi."))),
    ]


@pytest.mark.parametrize("family", [QWEN_AUDIO, QWEN2_AUDIO], ids=lambda f: f.name)
def test_item_ids_labels_and_features(family, tokenizers, clips):
    tok = tokenizers[family]
    ds = AudioTextDataset(_examples(), tok, N_MELS[family], audio_root=clips)
    for index, example in enumerate(ds.examples):
        item = ds[index]
        ids, labels = item["ids"].tolist(), item["labels"].tolist()
        # features: the contract's log-mel of each clip window, 2 lookahead frames
        refs = {"asr": [("a.wav", 0, None)], "srwt": [("b.wav", 0, None)],
                "window": [("chord.wav", 8000, 8000 + 20000)],
                "chat": [("a.wav", 0, None), ("chord.wav", 0, None)], "text": []}[example.id]
        assert len(item["features"]) == len(refs)
        for feats, (name, start, end) in zip(item["features"], refs):
            expected = log_mel_spectrogram(load_audio(clips / name)[start:end], N_MELS[family],
                                           lookahead=2)
            torch.testing.assert_close(feats, expected, rtol=0, atol=0)
        mel_lens = item["feature_lens"].tolist()
        assert mel_lens == [f.shape[1] - 2 for f in item["features"]]
        # ids: exactly the rendered prompt, then the target and the end token
        counts = [int(audio_token_count(n)) for n in mel_lens]
        prompt = render_prompt(example, family, clips).encode(tok, counts).ids
        assert ids[: len(prompt)] == prompt
        history = [x for x in labels[: len(prompt)] if x != -100]  # earlier assistant turns
        assert tok.decode(history) == ("Speech.<|im_end|>" if example.id == "chat" else "")
        answer = ids[len(prompt):]
        assert labels[len(prompt):] == answer
        v1_task = family is QWEN_AUDIO and example.id in ("asr", "srwt", "window")
        assert answer[-1] == (tok.eod_id if v1_task else tok.im_end_id)
        slots = item["audio_slot_mask"]
        assert int(slots.sum()) == sum(counts) + (2 * len(counts) if family is QWEN_AUDIO
                                                  else 0)
        assert not slots[len(prompt):].any()
    v1_srwt = family is QWEN_AUDIO
    answer = ds[1]["ids"][ds[1]["labels"] != -100].tolist()
    text = tok.decode(answer)
    if v1_srwt:  # timestamps and <|sil|> are single special tokens, not BPE pieces
        assert text == "<|sil|><|0.40|>hello<|0.90|><|1.00|>there<|1.50|><|endoftext|>"
        assert tok.special_tokens["<|0.40|>"] in answer
    else:
        assert text == "hello (0.40-0.90) there (1.00-1.50)<|im_end|>"


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of labels != -100."""
    runs: list[tuple[int, int]] = []
    for i, x in enumerate(labels):
        if x == -100:
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


@pytest.mark.parametrize("family", [QWEN_AUDIO, QWEN2_AUDIO], ids=lambda f: f.name)
def test_every_assistant_turn_is_labelled(family, tokenizers, clips):
    """SFT labels: each assistant turn's content + <|im_end|>, nothing else; the ids are the
    tokenizer's one-pass encoding of the whole rendered chat (token boundaries hold)."""
    tok = tokenizers[family]
    two_turns = (P.Message("user", (P.AudioPart(str(clips / "a.wav"), name="a.wav"),
                                    P.TextPart("What is this?"))),
                 P.Message("assistant", "Speech, a man talking."),
                 P.Message("user", "Is it loud?"), P.Message("assistant", "No: quiet."))
    three_turns = (P.Message("system", "Answer briefly."), P.Message("user", "Hi!"),
                   P.Message("assistant", "  Hello (spaces first)."), P.Message("user", "2+2?"),
                   P.Message("assistant", "4"), P.Message("user", "Thanks."),
                   P.Message("assistant", "You're welcome!"))
    examples = [
        Example("audio-chat", (AudioRef("a.wav"),), ExampleTask("chat"), "No: quiet.",
                messages=(ExampleTurn("user", "What is this?", (0,)),
                          ExampleTurn("assistant", "Speech, a man talking."),
                          ExampleTurn("user", "Is it loud?"),
                          ExampleTurn("assistant", "No: quiet."))),
        Example("text-chat", (), ExampleTask("text_chat"), "You're welcome!",
                messages=tuple(ExampleTurn(m.role, m.content[0].text) for m in three_turns)),
    ]
    ds = AudioTextDataset(examples, tok, N_MELS[family], audio_root=clips)
    for item, chat in zip([ds[0], ds[1]], [two_turns, three_turns]):
        ids, labels = item["ids"].tolist(), item["labels"].tolist()
        counts = [int(audio_token_count(n)) for n in item["feature_lens"].tolist()]
        whole = P.build_chat_prompt(chat, family, add_generation_prompt=False).encode(tok, counts)
        tail = whole.ids[len(ids):]  # v2 closes every turn with "\n", v1 not the last one
        assert whole.ids[: len(ids)] == ids
        assert tail == (tok.encode("\n") if family is QWEN2_AUDIO else [])
        replies = [m.content[0].text for m in chat if m.role == "assistant"]
        runs = _runs(labels)
        assert [ids[a:b] for a, b in runs] == [tok.encode(r) + [tok.im_end_id] for r in replies]
        assert [tok.decode(labels[a:b]) for a, b in runs] == [f"{r}<|im_end|>" for r in replies]
        header = [tok.im_start_id, *tok.encode("assistant\n")]
        assert all(ids[a - len(header): a] == header for a, _ in runs)
        assert not item["audio_slot_mask"][torch.tensor(labels) != -100].any()
    # DPO scores only the final answer; a text-only task item renders (v1: as a chat)
    last_only = AudioTextDataset(examples, tok, N_MELS[family], audio_root=clips, all_turns=False)
    item = last_only[1]
    assert tok.decode(item["labels"][item["labels"] != -100].tolist()) == \
        "You're welcome!<|im_end|>"
    plain = AudioTextDataset([Example("qa", (), ExampleTask("text_qa", instruction="2+2?"), "4")],
                             tok, N_MELS[family])[0]
    assert plain["features"] == [] and plain["ids"][0] == tok.im_start_id
    assert tok.decode(plain["labels"][plain["labels"] != -100].tolist()) == "4<|im_end|>"


def test_reply_glued_to_its_header_is_an_error(tokenizers):
    """A reply starting with a newline merges with the header's (Qwen2 BPE): named, not
    silently left without labels."""
    chat = (ExampleTurn("user", "Hi"), ExampleTurn("assistant", "\nHello"),
            ExampleTurn("user", "Again"), ExampleTurn("assistant", "Hello"))
    ds = AudioTextDataset([Example("glued", (), ExampleTask("text_chat"), "Hello", messages=chat)],
                          tokenizers[QWEN2_AUDIO], 128)
    with pytest.raises(DataError, match="example 'glued'.*found 0 of its 1 earlier assistant"):
        ds[0]


def test_bad_example_error_names_it(tokenizers, clips):
    ds = AudioTextDataset([Example("lost", (AudioRef("nowhere.wav"),), ExampleTask("asr"), "x"),
                           Example("late", (AudioRef("a.wav", 99.0, 1.0),), ExampleTask("asr"),
                                   "x")],
                          tokenizers[QWEN2_AUDIO], 128, audio_root=clips)
    with pytest.raises(DataError, match="example 'lost'.*nowhere.wav"):
        ds[0]
    with pytest.raises(DataError, match="example 'late'.*past the end"):
        ds[1]


def test_collate_layout(tokenizers, clips):
    tok = tokenizers[QWEN2_AUDIO]
    ds = AudioTextDataset(_examples(), tok, 128, audio_root=clips)
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items, tok.eod_id)
    lens = [len(i["ids"]) for i in items]
    assert batch["ids"].shape == (5, max(lens)) and batch["token_lens"].tolist() == lens
    assert batch["example_ids"] == ["asr", "srwt", "window", "chat", "text"]
    assert batch["clip_counts"].tolist() == [1, 1, 1, 2, 0]
    all_lens = [n for i in items for n in i["feature_lens"].tolist()]
    assert batch["feature_lens"].tolist() == all_lens
    assert batch["features"].shape == (5, 128, max(all_lens) + 2)
    clips_in_order = [f for i in items for f in i["features"]]
    for c, clip in enumerate(clips_in_order):
        assert torch.equal(batch["features"][c, :, : clip.shape[1]], clip)
        assert not batch["features"][c, :, clip.shape[1]:].any()
    for b, n in enumerate(lens):
        assert batch["token_mask"][b].tolist() == [True] * n + [False] * (max(lens) - n)
        assert (batch["ids"][b, n:] == tok.eod_id).all()
        assert (batch["labels"][b, n:] == -100).all()
    text_only = collate([items[4]], tok.eod_id)
    assert text_only["features"] is None and text_only["feature_lens"] is None


def _small_vocab(batch: dict, vocab: int) -> dict:
    """The batch with token ids folded into a tiny model's vocabulary (id % vocab).

    Batching invariance does not depend on which ids a row holds; folding keeps the tiny model's
    logits small ([B, S, 512] instead of [B, S, 151k]). Slot masks are already computed.
    """
    labels = batch["labels"]
    return {**batch, "ids": batch["ids"] % vocab,
            "labels": torch.where(labels == -100, labels, labels % vocab)}


@pytest.mark.parametrize("family", [QWEN_AUDIO, QWEN2_AUDIO], ids=lambda f: f.name)
def test_batched_equals_single(family, tokenizers, clips):
    """Each row of a padded batch gets the logits it gets alone; the loss is the token mean."""
    tok = tokenizers[family]
    model = random_model("tiny-random-v1" if family is QWEN_AUDIO else "tiny-random")
    vocab = model.config.decoder.vocab_size
    ds = AudioTextDataset(_examples(), tok, model.config.encoder.n_mels, audio_root=clips)
    items = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        batched = model(**model_inputs(_small_vocab(collate(items, tok.eod_id), vocab)))
        total, count = 0.0, 0
        for b, item in enumerate(items):
            alone = model(**model_inputs(_small_vocab(collate([item], tok.eod_id), vocab)))
            n = len(item["ids"])
            torch.testing.assert_close(batched.logits[b, :n], alone.logits[0], rtol=1e-4,
                                       atol=1e-4)
            labeled = int((item["labels"][1:] != -100).sum())
            total, count = total + float(alone.loss) * labeled, count + labeled
    assert float(batched.loss) == pytest.approx(total / count, rel=1e-5)


def test_dataloader_workers_and_sampler(tokenizers, clips):
    tok = tokenizers[QWEN_AUDIO]
    ds = AudioTextDataset(_examples() * 2, tok, 80, audio_root=clips)
    tokens, frames = ds.lengths
    assert tokens == [len(ds[i]["ids"]) for i in range(len(ds))]
    assert frames == [ds[i]["feature_lens"].tolist() for i in range(len(ds))]
    sampler = BucketBatchSampler(tokens, frames, max_tokens=800, max_frames=2000, seed=3)
    serial = list(DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(tok.eod_id)))
    sampler.set_epoch(0)
    parallel = list(DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(tok.eod_id),
                               num_workers=2))
    assert [b["example_ids"] for b in parallel] == [b["example_ids"] for b in serial]
    assert sorted(i for b in serial for i in b["example_ids"]) == sorted(
        e.id for e in ds.examples)
    for a, b in zip(serial, parallel):
        for key in ("ids", "labels", "token_mask", "audio_slot_mask"):
            assert torch.equal(a[key], b[key])
        assert (a["features"] is None and b["features"] is None) or torch.equal(
            a["features"], b["features"])


def test_lalm_synth_set_validates_and_loads_into_batches(tmp_path, tokenizers):
    from lalm.synth import generate

    tasks = ["sound_event", "music_pitch", "event_order", "chord_quality", "text_chat"]
    generate(tmp_path, "tiny", seed=0, tasks=tasks, workers=1)
    manifest = tmp_path / "train.jsonl"
    report = check_manifest(manifest)
    assert report.ok, report.summary()
    assert report.good == len(read_manifest(manifest)) == len(tasks)
    for family, tok in tokenizers.items():
        ds = AudioTextDataset.from_manifest(manifest, tok, N_MELS[family])
        tokens, frames = ds.lengths
        sampler = BucketBatchSampler(tokens, frames, max_tokens=4096, max_frames=16000)
        batches = list(DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(tok.eod_id)))
        assert sorted(i for b in batches for i in b["example_ids"]) == sorted(
            e.id for e in ds.examples)
        for b in batches:
            assert (b["labels"] != -100).any(dim=1).all()  # every item has a target


@pytest.mark.parametrize("family", [QWEN_AUDIO, QWEN2_AUDIO], ids=lambda f: f.name)
def test_packed_rows_equal_single(family, tokenizers, clips):
    """Items packed into one row (segment_ids) get the logits they get alone, and the loss."""
    tok = tokenizers[family]
    v1 = family is QWEN_AUDIO
    config = ModelConfig.from_name("tiny-random-v1" if v1 else "tiny-random")
    if v1:  # packed segments must stay within train_seq_len under dynamic NTK
        config = config.replace(decoder={"train_seq_len": 512})
    model = random_model(config)
    vocab = config.decoder.vocab_size
    ds = AudioTextDataset(_examples(), tok, config.encoder.n_mels, audio_root=clips)
    items = [ds[i] for i in range(len(ds))]
    rows = pack_items(items, max_tokens=256)
    assert 1 < len(rows) < len(items)
    assert sorted(i for r in rows for i in r["id"].split("+")) == sorted(i["id"] for i in items)
    batch = Collator(tok.eod_id, pack_tokens=256)(items)
    assert batch["example_ids"] == [r["id"] for r in rows]
    with torch.no_grad():
        packed = model(**model_inputs(_small_vocab(batch, vocab)))
        alone = {i["id"]: model(**model_inputs(_small_vocab(collate([i], tok.eod_id), vocab)))
                 for i in items}
        unpacked = model(**model_inputs(_small_vocab(collate(items, tok.eod_id), vocab)))
    for r, row in enumerate(rows):
        start = 0
        for k, example_id in enumerate(row["id"].split("+")):
            n = alone[example_id].logits.shape[1]
            assert (batch["segment_ids"][r, start:start + n] == k).all()
            torch.testing.assert_close(packed.logits[r, start:start + n],
                                       alone[example_id].logits[0], rtol=1e-4, atol=1e-4)
            start += n
        assert (batch["segment_ids"][r, start:] == -1).all()
    assert float(packed.loss) == pytest.approx(float(unpacked.loss), rel=1e-5)
    if v1:
        short = model.config.replace(decoder={"train_seq_len": 64})
        with pytest.raises(ValueError, match="longer than train_seq_len 64"):
            random_model(short)(**model_inputs(_small_vocab(batch, vocab)))


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("family", [QWEN_AUDIO, QWEN2_AUDIO], ids=lambda f: f.name)
def test_messages_audio_trains_where_its_tag_stands(family, tokenizers, clips):
    """A messages row's "Listen to this: <audio> and tell me": the training ids hear the audio
    between the two texts (each audio at its own tag, in order), as the chat prompt of the same
    parts encodes them; labels only on the replies."""
    tok = tokenizers[family]
    path = _write_rows(clips / "swift.jsonl", [{"audios": ["a.wav", "chord.wav"], "messages": [
        {"role": "user", "content": "Listen to this: <audio> and tell me what it is."},
        {"role": "assistant", "content": "Speech."},
        {"role": "user", "content": "Now compare <audio> with it."},
        {"role": "assistant", "content": "A chord."}]}])
    item = AudioTextDataset.from_manifest(path, tok, N_MELS[family])[0]
    ids, labels = item["ids"].tolist(), item["labels"].tolist()
    a, chord = (P.AudioPart(str(clips / n)) for n in ("a.wav", "chord.wav"))
    chat = [P.Message("user", (P.TextPart("Listen to this: "), a,
                               P.TextPart(" and tell me what it is."))),
            P.Message("assistant", "Speech."),
            P.Message("user", (P.TextPart("Now compare "), chord, P.TextPart(" with it.")))]
    counts = [int(audio_token_count(n)) for n in item["feature_lens"].tolist()]
    spans = P.build_chat_prompt(chat, family).encode(tok, counts)
    assert ids[: len(spans.ids)] == spans.ids
    (s0, e0), (s1, e1) = spans.audio_spans
    assert item["audio_slot_mask"].nonzero().flatten().tolist() == [*range(s0, e0),
                                                                    *range(s1, e1)]
    bos, eos = ("", "") if family is QWEN_AUDIO else (" <|audio_bos|>", "<|audio_eos|>")
    assert tok.decode(ids[:s0]).endswith(f"user\nListen to this: Audio 1:{bos}")
    assert tok.decode(ids[e0:]).startswith(f"{eos}\n and tell me what it is.<|im_end|>")
    assert tok.decode(ids[e1:]).startswith(f"{eos}\n with it.<|im_end|>")
    assert [tok.decode(labels[x:y]) for x, y in _runs(labels)] == ["Speech.<|im_end|>",
                                                                   "A chord.<|im_end|>"]


@pytest.mark.parametrize("loss_on", [None, "last_assistant"])
def test_shipped_sft_config_trains_every_assistant_turn(loss_on, tokenizers, clips):
    """The shipped SFT config (data.loss_on: all_assistant, the default) labels every assistant
    turn of a 3-turn chat, each with its <|im_end|>, and nothing of the system, user or audio
    tokens; data.loss_on=last_assistant only the final answer."""
    from lalm.training.build import build_dataset
    from lalm.training.stages import TrainConfig

    replies = ["It is speech.", "Quiet.", "A man."]
    path = _write_rows(clips / "three.jsonl", [{"audios": ["a.wav"], "messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "<audio>What is this?"},
        {"role": "assistant", "content": replies[0]},
        {"role": "user", "content": "Is it loud?"}, {"role": "assistant", "content": replies[1]},
        {"role": "user", "content": "Who speaks?"}, {"role": "assistant", "content": replies[2]}]}])
    sets = [f"data.train=[{{manifest: {path}}}]", "data.valid=null"]
    sets += [f"data.loss_on={loss_on}"] if loss_on else []
    config = TrainConfig.from_file("sft", sets)  # the shipped stage2_sft.yaml
    assert config.data.loss_on == (loss_on or "all_assistant")
    tok = tokenizers[QWEN2_AUDIO]
    dataset, skipped = build_dataset(config.data.train, config, tok, 128, seed=0)
    assert skipped == 0
    item = dataset[0]
    ids, labels = item["ids"].tolist(), item["labels"].tolist()
    runs = _runs(labels)
    expected = replies if loss_on is None else replies[-1:]
    assert [ids[x:y] for x, y in runs] == [tok.encode(r) + [tok.im_end_id] for r in expected]
    assert not item["audio_slot_mask"][torch.tensor(labels) != -100].any()
    header = [tok.im_start_id, *tok.encode("assistant\n")]
    assert all(ids[x - len(header): x] == header for x, _ in runs)


def test_a_short_window_of_a_long_file_reads_only_up_to_its_end(tmp_path, monkeypatch):
    # issue 13.4: a training clip window is decoded up to its end, never the whole recording
    import lalm.data.dataset as dataset_module
    from lalm.audio import stream_audio

    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(600 * SAMPLE_RATE, np.float32), SAMPLE_RATE)  # 10 minutes
    handed = []

    def counting(*args, **kwargs):
        for block in stream_audio(*args, **kwargs):
            handed.append(block.shape[0])
            yield block

    monkeypatch.setattr(dataset_module, "stream_audio", counting)
    clip = load_clip(AudioRef(str(path), 2.0, 1.5), max_seconds=30)
    assert clip.shape == (round(1.5 * SAMPLE_RATE),)
    assert sum(handed) - max(handed) < round(3.5 * SAMPLE_RATE)  # one block past the window
    with pytest.raises(DataError, match="longer than 30 s"):  # to the end: 598 s, refused
        load_clip(AudioRef(str(path), 2.0), max_seconds=30)
