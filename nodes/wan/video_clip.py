"""The VIDEO value ComfyUI's video nodes pass around: frames, frame rate and (optional) audio.

ComfyUI's VIDEO is a `VideoInput` (`VideoFromComponents` or a lazily decoded `VideoFromFile`);
here it is this small immutable record, with the file decoded when it is loaded. Frames follow
the IMAGE convention, float32 [N, H, W, 3] in 0..1; `audio` is ComfyUI's AUDIO dict
({"waveform": [B, C, S], "sample_rate": int}) or None.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import media


@dataclass(frozen=True, eq=False)
class VideoClip:
    frames: np.ndarray
    fps: float
    audio: dict | None = None

    def __post_init__(self):
        frames = np.asarray(self.frames.asnumpy() if hasattr(self.frames, "asnumpy") else self.frames, np.float32)
        if frames.ndim != 4 or frames.shape[-1] not in (3, 4):
            raise ValueError(f"a video's frames must be IMAGE [N, H, W, 3], got shape {frames.shape}")
        if not self.fps > 0:
            raise ValueError(f"a video's frame rate must be positive, got {self.fps}")
        object.__setattr__(self, "frames", frames[..., :3])
        object.__setattr__(self, "fps", float(self.fps))

    @classmethod
    def from_file(cls, path: str | Path) -> "VideoClip":
        frames, fps = media.load_video(path)
        return cls(frames, fps or 24.0)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def save_mp4(self, path: str | Path, crf: int = 19) -> Path:
        """H.264 yuv420p MP4. Levels are truncated to 8 bits as ComfyUI's VIDEO writer does
        (`(frame * 255).clamp(0, 255).byte()`); the audio track is not written."""
        levels = np.floor(np.clip(self.frames * np.float32(255.0), 0, 255)) / np.float32(255.0)
        return media.save_mp4(levels, path, fps=self.fps, crf=crf)

    def cache_nbytes(self) -> int:
        return int(self.frames.nbytes)
