"""The default provider: renders real H.264 clips locally with ffmpeg.

Each part is a portrait clip showing the product name and the theme; parts are joined
with ffmpeg's concat demuxer without re-encoding. ffmpeg is imageio-ffmpeg's bundled
binary (libx264, drawtext), so no OS ffmpeg is needed; Chinese text needs a CJK font,
which `make bootstrap` installs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import unicodedata
from pathlib import Path

import imageio_ffmpeg

from service import errors
from service.providers.base import PartJob
from service.settings import Settings

logger = logging.getLogger(__name__)

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)
# Background colours cycle by part so that parts are told apart in the merged video.
BACKGROUNDS = ("0x1e3a8a", "0x7c2d12", "0x14532d", "0x4c1d95", "0x0f172a")
# Wrap titles at this many "columns" (a CJK character takes two).
TITLE_COLUMNS = 18
FFMPEG_TIMEOUT_S = 120
STDERR_TAIL_CHARS = 400


def find_font(configured: str = "") -> str:
    if configured:
        if not Path(configured).is_file():
            raise errors.ConfigError(f"VIDEO_FONT_FILE {configured} does not exist")
        return configured
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    raise errors.ConfigError("no CJK font found: run `make bootstrap` (installs "
                             "fonts-wqy-zenhei) or set VIDEO_FONT_FILE")


def wrap_title(text: str, columns: int = TITLE_COLUMNS) -> str:
    """Break text into lines of at most `columns`, counting wide characters as two."""
    lines, line, width = [], "", 0
    for ch in text:
        w = 2 if unicodedata.east_asian_width(ch) in {"W", "F"} else 1
        if width + w > columns and line:
            lines.append(line)
            line, width = "", 0
        line += ch
        width += w
    lines.append(line)
    return "\n".join(lines)


def _filter_path(path: Path) -> str:
    """A path quoted for an ffmpeg filter argument."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "'\\''").replace(":", "\\:") + "'"


class FfmpegProvider:
    name = "ffmpeg"

    def __init__(self, *, width: int, height: int, fps: int, font_file: str,
                 ffmpeg: str | None = None) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.font_file = font_file
        self.ffmpeg = ffmpeg or imageio_ffmpeg.get_ffmpeg_exe()

    @classmethod
    def from_settings(cls, settings: Settings) -> FfmpegProvider:
        return cls(width=settings.video_width, height=settings.video_height,
                   fps=settings.video_fps, font_file=find_font(settings.video_font_file))

    async def render_part(self, job: PartJob, dest: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="part-", dir=dest.parent) as tmp:
            # Text goes through files, never through the filter string: no escaping of
            # user input, and expansion=none keeps %{...} literal.
            title, theme, label = Path(tmp, "title.txt"), Path(tmp, "theme.txt"), \
                Path(tmp, "label.txt")
            title.write_text(wrap_title(job.product_name), encoding="utf-8")
            theme.write_text(wrap_title(job.theme, TITLE_COLUMNS + 8), encoding="utf-8")
            label.write_text(f"{job.index + 1} / {job.count}", encoding="utf-8")
            font = _filter_path(Path(self.font_file))
            size = min(self.width, self.height)
            text = (f"drawtext=fontfile={font}:expansion=none:fontcolor=white:"
                    "line_spacing=12:x=(w-text_w)/2")
            video_filter = ",".join([
                f"{text}:textfile={_filter_path(title)}:fontsize={size // 10}:y=h*0.38",
                f"{text}:textfile={_filter_path(theme)}:fontsize={size // 15}:y=h*0.55:"
                "fontcolor=0xfbbf24",
                f"{text}:textfile={_filter_path(label)}:fontsize={size // 24}:y=h*0.9:"
                "fontcolor=0xcbd5e1",
                "fade=t=in:st=0:d=0.4",
            ])
            background = BACKGROUNDS[job.index % len(BACKGROUNDS)]
            out = Path(tmp, "part.mp4")
            await self._ffmpeg([
                "-f", "lavfi", "-i",
                f"color=c={background}:s={self.width}x{self.height}:d={job.seconds}:r={self.fps}",
                "-vf", video_filter,
                "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
                "-r", str(self.fps), "-movflags", "+faststart", str(out),
            ])
            os.replace(out, dest)

    async def merge(self, parts: list[Path], dest: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="merge-", dir=dest.parent) as tmp:
            listing = Path(tmp, "parts.txt")
            listing.write_text("".join(f"file {_concat_path(p)}\n" for p in parts),
                               encoding="utf-8")
            out = Path(tmp, "video.mp4")
            await self._ffmpeg(["-f", "concat", "-safe", "0", "-i", str(listing),
                                "-c", "copy", "-movflags", "+faststart", str(out)])
            os.replace(out, dest)

    async def _ffmpeg(self, args: list[str]) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), FFMPEG_TIMEOUT_S)
        except (asyncio.CancelledError, TimeoutError) as exc:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise errors.ProviderError(f"ffmpeg took longer than {FFMPEG_TIMEOUT_S} s") \
                    from exc
            raise
        if proc.returncode != 0:
            tail = stderr.decode(errors="replace")[-STDERR_TAIL_CHARS:].strip()
            logger.warning("ffmpeg failed (%s): %s", proc.returncode, tail)
            raise errors.ProviderError(f"ffmpeg exited with {proc.returncode}")


def _concat_path(path: Path) -> str:
    return "'" + str(path.resolve()).replace("'", "'\\''") + "'"
