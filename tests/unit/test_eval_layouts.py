"""Speech corpora in their downloaded layouts (LibriSpeech, AISHELL-1, Common Voice, FLEURS,
CoVoST 2) and HF `datasets` with an Audio column (save_to_disk and parquet), each written here
in miniature with real audio files, read by the tasks that score them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lalm.errors import DataError
from lalm.eval.tasks import ScoreContext, get_task
from lalm.prompt import QWEN2_AUDIO

V2 = QWEN2_AUDIO


def _audio(path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000, format=fmt)
    return path


def test_librispeech_split_folder(tmp_path: Path) -> None:
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1089" / "134686"
    for utt in ("1089-134686-0000", "1089-134686-0001"):
        _audio(chapter / f"{utt}.flac")
    (chapter / "1089-134686.trans.txt").write_text(
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW\n1089-134686-0001 STUFF IT INTO YOU\n")
    task = get_task("librispeech")
    for data in (tmp_path / "LibriSpeech" / "test-clean", tmp_path / "LibriSpeech"):
        items = task.read(data).items
        assert [i.id for i in items] == ["1089-134686-0000", "1089-134686-0001"]
        assert {i.source for i in items} == {"librispeech_test_clean"}
        assert items[0].audios == (str((chapter / "1089-134686-0000.flac").resolve()),)
    records = [{**i.record(), "response": i.reference.lower()} for i in items]
    assert task.score(records, ScoreContext(V2))["error_rate"] == {"librispeech_test_clean": 0.0}
    (chapter / "1089-134686-0001.flac").unlink()
    with pytest.raises(DataError, match="no audio"):
        task.read(tmp_path / "LibriSpeech")


def test_aishell1_folder_skips_clips_without_transcript(tmp_path: Path) -> None:
    root = tmp_path / "data_aishell"
    (root / "transcript").mkdir(parents=True)
    (root / "transcript" / "aishell_transcript_v0.8.txt").write_text(
        "BAC009S0764W0121 甚至 出现 交易 几乎 停滞 的 情况\n", encoding="utf-8")
    _audio(root / "wav" / "test" / "S0764" / "BAC009S0764W0121.wav")
    _audio(root / "wav" / "test" / "S0764" / "BAC009S0764W0999.wav")
    task = get_task("aishell1")
    for data in (root, root / "wav" / "test"):
        loaded = task.read(data)
        assert [i.id for i in loaded.items] == ["BAC009S0764W0121"]
        assert loaded.items[0].source == "aishell1_test"
        assert len(loaded.skipped) == 1 and "W0999" in loaded.skipped[0]
    records = [{**loaded.items[0].record(), "response": "甚至出现交易几乎停滞的情况"}]
    assert task.score(records, ScoreContext(V2))["error_rate"] == {"aishell1_test": 0.0}


def test_common_voice_locale_folder_with_mp3_clips(tmp_path: Path) -> None:
    locale = tmp_path / "cv-corpus-15.0" / "en"
    _audio(locale / "clips" / "common_voice_en_1.mp3", "MP3")
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tlocale"
    (locale / "test.tsv").write_text(
        f"{header}\nabc\tcommon_voice_en_1.mp3\tHe said \"hi\".\t2\t0\t\t\t\ten\n")
    item = get_task("cv15_en").read(locale).items[0]
    assert item.reference == 'He said "hi".' and item.source == "common_voice_en_test"
    assert item.audios == (str((locale / "clips" / "common_voice_en_1.mp3").resolve()),)
    assert get_task("cv15_en").read(locale / "test.tsv").items == [item]


def test_fleurs_language_folder(tmp_path: Path) -> None:
    lang = tmp_path / "cmn_hans_cn"
    _audio(lang / "audio" / "test" / "1234.wav")
    (lang / "test.tsv").write_text("7\t1234.wav\t你好，世界。\t你好 世界\t你 好|世 界|\t1600\tMALE\n",
                                   encoding="utf-8")
    item = get_task("fleurs_zh").read(lang).items[0]
    assert (item.id, item.reference, item.source) == ("1234", "你好，世界。", "fleurs_cmn_hans_cn_test")
    assert item.fields == {"sentence_id": "7", "transcription": "你好 世界"}


def test_covost2_tsv_with_the_source_languages_clips(tmp_path: Path) -> None:
    _audio(tmp_path / "en" / "clips" / "common_voice_en_9.mp3", "MP3")
    (tmp_path / "en" / "covost_v2.en_de.test.tsv").write_text(
        "path\tsentence\ttranslation\tclient_id\n"
        "common_voice_en_9.mp3\tGood morning.\tGuten Morgen.\tx\n")
    task = get_task("covost2")
    item = task.read(tmp_path / "en").items[0]
    assert (item.reference, item.source) == ("Guten Morgen.", "covost2_en_de_test")
    assert item.audios == (str((tmp_path / "en" / "clips" / "common_voice_en_9.mp3").resolve()),)
    assert task.request(item, V2).prompt.text.endswith("Translate the speech into German:")
    bad = tmp_path / "covost.tsv"
    bad.write_text("path\tsentence\ttranslation\n")
    with pytest.raises(DataError, match="covost_v2"):
        task.read(bad)


def _hf_dataset(tmp_path: Path):  # noqa: ANN202 - a datasets.Dataset
    datasets = pytest.importorskip("datasets")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(800, dtype=np.float32), 16000, format="WAV")
    on_disk = _audio(tmp_path / "clips" / "b.wav")
    ds = datasets.Dataset.from_dict({
        "audio": [{"bytes": buf.getvalue(), "path": "u1.wav"}, {"bytes": None,
                                                                "path": str(on_disk)}],
        "text": ["HELLO WORLD", "GOOD DAY"], "id": ["u1", "u2"], "speaker_id": [7, 8]})
    return ds.cast_column("audio", datasets.Audio()), buf.getvalue()


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet"])
def test_hf_dataset_with_an_audio_column(kind: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LALM_CACHE", str(tmp_path / "cache"))
    ds, wav = _hf_dataset(tmp_path)
    if kind == "save_to_disk":
        ds.save_to_disk(str(tmp_path / "ds"))
        data = tmp_path / "ds"
    else:
        ds.to_parquet(str(tmp_path / "test.parquet"))
        data = tmp_path / "test.parquet"
    items = get_task("librispeech").read(data).items
    assert [(i.id, i.reference, i.fields["speaker_id"]) for i in items] == [
        ("u1", "HELLO WORLD", 7), ("u2", "GOOD DAY", 8)]
    first = Path(items[0].audios[0])
    assert first.parent == tmp_path / "cache" / "eval-audio" and first.read_bytes() == wav
    assert sf.info(items[1].audios[0]).frames == 1600


def test_unrecognised_folder_names_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="LibriSpeech / AISHELL"):
        get_task("librispeech").read(tmp_path)
