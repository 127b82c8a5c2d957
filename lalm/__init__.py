"""lalm: large audio-language models of the Qwen-Audio kind."""

__version__ = "0.1.0"
