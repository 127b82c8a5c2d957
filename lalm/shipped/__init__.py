"""Trained tensors shipped with lalm (package data): ``smollm_model/`` holds the SmolLM2 audio
model's projector and new vocabulary rows (`lalm.smollm_model`)."""
