"""Export single-choice items in AIR-Bench's foundation layout, so its scorer runs unchanged.

Layout: ``<root>/Foundation_meta.json`` (a JSON list of {path, question, choice_a, choice_b,
[choice_c, choice_d], answer_gt, task_name, dataset_name, uniq_id}) and the audio at
``<root>/<task_name>_<dataset_name>/<path>``. `answer_gt` equals one choice's text, which is how
the scorer finds the right letter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lalm.data.manifest import iter_manifest
from lalm.files import atomic_write

DATASET_NAME = "lalm-synth"

#: lalm-synth task -> AIR-Bench task_name (AIR-Bench's own name where the task is the same).
AIRBENCH_TASKS = {
    "language_id": "Spoken_Language_Identification",
    "speaker_gender": "Speaker_Gender_Recognition",
    "speaking_rate": "Speaking_Rate_Classification",
    "sound_event": "Sound_Event_Classification",
    "acoustic_scene": "Acoustic_Scene_Classification",
    "event_count": "Sound_Event_Counting",
    "event_order": "Sound_Event_Ordering",
    "music_pitch": "Music_Midi_Pitch_Analysis",
    "music_instrument": "Music_Instruments_Classification",
    "chord_quality": "Music_Chord_Quality",
    "tempo": "Music_Tempo_Estimation",
    "mixed_choice": "Mixed_Audio_AQA",
}
_LETTERS = "abcd"


def export_airbench(dataset_dir: str | os.PathLike[str], manifest: str | os.PathLike[str],
                    root: str | os.PathLike[str]) -> int:
    """Write the AIR-Bench foundation files for the single-choice, one-audio items of a manifest.

    Args:
        dataset_dir: the folder that the manifest's relative audio paths start from.
        manifest: a lalm JSONL manifest (normally the test split).
        root: output folder (``Foundation_meta.json`` and the per-task audio folders).

    Returns:
        The number of exported items.
    """
    dataset_dir, root = Path(dataset_dir), Path(root)
    meta = []
    for ex in iter_manifest(manifest):
        if ex.task.name not in AIRBENCH_TASKS or not ex.task.choices or len(ex.audios) != 1:
            continue
        task_name = AIRBENCH_TASKS[ex.task.name]
        name = Path(ex.audios[0].path).name
        target = root / f"{task_name}_{DATASET_NAME}" / name
        data = (dataset_dir / ex.audios[0].path).read_bytes()
        if not target.exists() or target.read_bytes() != data:
            atomic_write(target, data)
        row: dict[str, object] = {"path": name, "question": ex.task.question}
        row.update({f"choice_{_LETTERS[i]}": c for i, c in enumerate(ex.task.choices)})
        row.update({"answer_gt": ex.answer, "task_name": task_name,
                    "dataset_name": DATASET_NAME, "uniq_id": len(meta)})
        meta.append(row)
    atomic_write(root / "Foundation_meta.json",
                 json.dumps(meta, ensure_ascii=False, indent=1).encode("utf-8"))
    return len(meta)
