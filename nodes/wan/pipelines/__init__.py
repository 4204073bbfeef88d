"""Sampling and conditioning: schedulers, the denoise loop, text / image / VACE conditioning, whole pipelines."""
