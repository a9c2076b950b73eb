"""Video providers: what makes a task's parts and joins them into one video."""

from __future__ import annotations

from service.providers.base import ClipResult, PartJob, PartRole, VideoProvider
from service.settings import Settings

__all__ = ["ClipResult", "PartJob", "PartRole", "VideoProvider", "from_settings"]


def from_settings(settings: Settings) -> VideoProvider:
    if settings.video_provider == "simulated":
        from service.providers.simulated import SimulatedProvider
        return SimulatedProvider.from_settings(settings)
    if settings.video_provider == "ark":
        from service.providers.ark import ArkProvider
        return ArkProvider.from_settings(settings)
    from service.providers.ffmpeg import FfmpegProvider
    return FfmpegProvider.from_settings(settings)
