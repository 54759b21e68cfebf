"""Measurement tools for the Stable Diffusion path: precision deviations and the GPU check."""
