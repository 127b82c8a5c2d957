
import pytest

from lalm.assets import ASSETS, asset_path
from lalm.errors import AssetError


def test_unknown_asset_is_a_clear_error():
    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        asset_path("nope")


@pytest.mark.slow
def test_qwen_tiktoken_from_dashscope_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("LALM_CACHE", str(tmp_path))
    path = asset_path("qwen.tiktoken")
    assert path == tmp_path / "assets" / "qwen.tiktoken"
    lines = path.read_text().splitlines()
    assert len(lines) == 151643 and lines[-1].endswith(" 151642")
    assert asset_path("qwen.tiktoken") == path  # cached: no second download
    assert ASSETS["qwen.tiktoken"].sha256
