"""``lalm serve``: an OpenAI-compatible HTTP server over a `lalm.generation.Pipeline`.

Chat completions with audio content parts (streaming or not), transcriptions, the model list,
health and metrics, and a web page; requests from many clients share forward passes
(`lalm.serve.batcher`). Needs the ``serve`` extra (fastapi, uvicorn, python-multipart); import
`lalm.serve.app` for the app itself.
"""

from lalm.serve.batcher import Batcher
from lalm.serve.inputs import ApiError, AudioAccess, Limits

__all__ = ["ApiError", "AudioAccess", "Batcher", "Limits"]
