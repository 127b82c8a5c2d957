"""lalm-synth: an offline multi-task audio dataset with exact answers, deterministic by seed.

Speech (8 languages, Piper and eSpeak NG), sound events and scenes, music, mixtures and chat,
each item with its exact answer; see docs/lalm-synth.md and `lalm synth --help`.
"""

from lalm.synth.generate import SIZES, Job, SynthReport, generate, plan
from lalm.synth.tasks import TASKS, Item

__all__ = ["SIZES", "TASKS", "Item", "Job", "SynthReport", "generate", "plan"]
