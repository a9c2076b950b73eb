"""The one place that runs ffmpeg: a guarded subprocess call and the normalising merge.

ffmpeg is imageio-ffmpeg's bundled static binary (libx264 included), so hosts need no
OS ffmpeg.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from functools import cache
from pathlib import Path

import imageio_ffmpeg

from service import errors

logger = logging.getLogger(__name__)

FFMPEG_TIMEOUT_S = 120.0
# Merging re-encodes every frame: allow this much more per second of output video.
MERGE_TIMEOUT_PER_S = 2.0
STDERR_TAIL_CHARS = 400
# The merged video is what users get: veryfast, not faster presets. Its encode is ~90% of
# the merge (15 s of 720x1280 in ~2 s on 2 cores); superfast saves a quarter of that time
# for files 1.7 times as large.
MERGE_PRESET = "veryfast"


@cache
def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


async def run_ffmpeg(args: list[str], *, timeout_s: float = FFMPEG_TIMEOUT_S) -> None:
    """Run ffmpeg with args; raise errors.ProviderError if it fails or takes too long.

    ffmpeg's stderr only goes to the log (its tail): it names local paths and is no
    message for users. A cancelled call kills ffmpeg before the cancellation goes on.
    """
    proc = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (asyncio.CancelledError, TimeoutError) as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise errors.ProviderError(f"ffmpeg took longer than {timeout_s:g} s") from exc
        raise
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace")[-STDERR_TAIL_CHARS:].strip()
        logger.warning("ffmpeg failed (%s): %s", proc.returncode, tail)
        raise errors.ProviderError(f"ffmpeg exited with {proc.returncode}")


async def merge_clips(clips: list[Path], lengths_s: list[int], dest: Path, *, width: int,
                      height: int, fps: int) -> None:
    """Join clips in order, each cut to its length, into one H.264 video at dest.

    Clips from an AI provider may differ in size, aspect ratio and frame rate and may run
    long or short, so every clip is normalised before the concat: scaled to fit inside
    width x height and letterboxed (not cropped to cover: a clip in the wrong aspect ratio
    keeps all of its picture, so the product and any text in it are never cut away), square
    pixels, a constant fps, and exactly lengths_s[i] * fps frames (a short clip holds its
    last frame). Audio is dropped: clips may or may not have it, and the concat needs the
    same streams in every clip.
    """
    if not clips or len(clips) != len(lengths_s):
        raise ValueError("merge_clips needs one length per clip, and at least one clip")
    if any(n <= 0 for n in lengths_s):
        raise ValueError("clip lengths must be positive")
    inputs: list[str] = []
    chains: list[str] = []
    for i, (clip, seconds) in enumerate(zip(clips, lengths_s, strict=True)):
        # Input -t: ffmpeg stops decoding a long clip at the cut instead of at its end.
        # Absolute paths: ffmpeg would read a relative "a:b.mp4" as protocol "a".
        inputs += ["-t", str(seconds), "-i", str(clip.resolve())]
        chains.append(
            f"[{i}:v:0]setpts=PTS-STARTPTS,fps={fps},"
            f"scale={width}:{height}:force_original_aspect_ratio=decrease:"
            "force_divisible_by=2,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p,"
            f"tpad=stop_mode=clone:stop_duration={seconds},"
            f"trim=end_frame={seconds * fps},setpts=PTS-STARTPTS[v{i}]")
    labels = "".join(f"[v{i}]" for i in range(len(clips)))
    graph = ";".join([*chains, f"{labels}concat=n={len(clips)}:v=1:a=0[out]"])
    frames = sum(lengths_s) * fps
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp",
                                dir=dest.resolve().parent)
    os.close(fd)
    tmp = Path(name)
    try:
        await run_ffmpeg([
            *inputs, "-filter_complex", graph, "-map", "[out]", "-an",
            "-frames:v", str(frames), "-r", str(fps),
            "-c:v", "libx264", "-preset", MERGE_PRESET, "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", str(tmp),
        ], timeout_s=FFMPEG_TIMEOUT_S + MERGE_TIMEOUT_PER_S * sum(lengths_s))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
