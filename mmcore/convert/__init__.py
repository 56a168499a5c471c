"""Converters from other libraries' checkpoints to mmcore models."""

from mmcore.convert.hf_clip import from_hf_clip, hf_clip_to_mmcore, spec_from_hf_clip_config

__all__ = ["from_hf_clip", "hf_clip_to_mmcore", "spec_from_hf_clip_config"]
