"""Test-data builders that downstream users can reuse (real speech, tiny checkpoints)."""
