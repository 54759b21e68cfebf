"""Frozen networks and how to run them: Stable Diffusion (loading, features), DINOv2, ODISE's CLIP
captioner, FreeU. Nothing here knows about datasets, protocols or matchers."""
