"""The one place that runs ffmpeg: a guarded subprocess call and the normalising merge.

ffmpeg is imageio-ffmpeg's bundled static binary (libx264 included), so hosts need no
OS ffmpeg.

The merge also marks the video as AI-generated, as China's rules for AI-generated content
(2025, and the national standard GB 45438-2025) ask: a visible label in the picture (the
explicit label) and an AIGC tag in the file's metadata (the implicit label).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
from functools import cache
from pathlib import Path

import imageio_ffmpeg
from PIL import Image, ImageDraw

from service import errors
from service.providers.layout import load_font, safe_area

logger = logging.getLogger(__name__)

FFMPEG_TIMEOUT_S = 120.0
# Merging re-encodes every frame: allow this much more per second of output video.
MERGE_TIMEOUT_PER_S = 2.0
STDERR_TAIL_CHARS = 400
# The merged video is what users get: veryfast, not faster presets. Its encode is ~90% of
# the merge (15 s of 720x1280 in ~2 s on 2 cores); superfast saves a quarter of that time
# for files 1.7 times as large.
MERGE_PRESET = "veryfast"
# The AI label: text this share of the video's height (33 px at 1280: legible on a phone
# without hiding the picture), in a pill this far from the top and right edges (a share of
# the width).
LABEL_TEXT_SHARE = 0.026
LABEL_MARGIN_SHARE = 0.03
LABEL_PAD_X, LABEL_PAD_Y = 0.55, 0.32  # pill padding / text size
LABEL_FILL = (0, 0, 0, 140)  # dark and see-through: readable on any picture
LABEL_TEXT = (255, 255, 255, 240)
# GB 45438-2025's implicit label: "AIGC" metadata, Label "1" = AI-generated content.
AIGC_PRODUCER = "video-tasks"
FTYP_KEYS = ("major_brand", "minor_version", "compatible_brands")


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
                      height: int, fps: int, label: str = "", font_file: str = "") -> None:
    """Join clips in order, each cut to its length, into one H.264 video at dest.

    Clips from an AI provider may differ in size, aspect ratio and frame rate and may run
    long or short, so every clip is normalised before the concat: scaled to fit inside
    width x height and letterboxed (not cropped to cover: a clip in the wrong aspect ratio
    keeps all of its picture, so the product and any text in it are never cut away), square
    pixels, a constant fps, and exactly lengths_s[i] * fps frames (a short clip holds its
    last frame). Audio is dropped: clips may or may not have it, and the concat needs the
    same streams in every clip.

    A non-empty label is drawn in the top-right corner for the whole video (see
    label_image and label_position) and written to the metadata with an AIGC tag.
    """
    if label and not font_file:
        raise ValueError("merge_clips needs a font_file to draw the label")
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
    pads = "".join(f"[v{i}]" for i in range(len(clips)))
    concat = f"{pads}concat=n={len(clips)}:v=1:a=0"
    frames = sum(lengths_s) * fps
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.",
                                     dir=dest.resolve().parent) as scratch:
        tags: list[str] = []
        movflags = "+faststart"
        if label:
            png = Path(scratch, "label.png")
            # Pillow (font loading, drawing, PNG) takes tens of ms: off the event loop.
            image = await asyncio.to_thread(_write_label, label, font_file, height, png)
            x, y = label_position(width, height, image.size)
            # One still frame that overlay holds to the end (eof_action=repeat): one more
            # input and a cheap blend per frame, within the encode the merge does anyway.
            inputs += ["-i", str(png)]
            graph = ";".join([*chains, f"{concat}[cat]",
                              f"[{len(clips)}:v]format=rgba[label]",
                              f"[cat][label]overlay=x={x}:y={y}:eof_action=repeat,"
                              "format=yuv420p[out]"])
            aigc = json.dumps({"Label": "1", "ContentProducer": AIGC_PRODUCER},
                              separators=(",", ":"))
            tags = ["-metadata", f"comment={label}: AI-generated content",
                    "-metadata", f"AIGC={aigc}"]
            # The mp4 muxer keeps a custom key (AIGC) only as an mdta tag. In that mode it
            # would also store the first clip's ftyp-derived keys as tags beside its own
            # ftyp ("isom;isom" when read back): an empty value drops them.
            movflags += "+use_metadata_tags"
            tags += [arg for key in FTYP_KEYS for arg in ("-metadata", f"{key}=")]
        else:
            graph = ";".join([*chains, f"{concat}[out]"])
        tmp = Path(scratch, "video.mp4")
        await run_ffmpeg([
            *inputs, "-filter_complex", graph, "-map", "[out]", "-an",
            "-frames:v", str(frames), "-r", str(fps),
            "-c:v", "libx264", "-preset", MERGE_PRESET, "-pix_fmt", "yuv420p",
            *tags, "-movflags", movflags, "-f", "mp4", str(tmp),
        ], timeout_s=FFMPEG_TIMEOUT_S + MERGE_TIMEOUT_PER_S * sum(lengths_s))
        # Same directory, so the rename is atomic: dest is whole or absent.
        os.replace(tmp, dest)


def label_image(label: str, font_file: str, height: int) -> Image.Image:
    """The label as white text on a dark, see-through pill, sized for a video this high."""
    size = max(10, round(height * LABEL_TEXT_SHARE))
    font = load_font(font_file, size)
    left, top, right, bottom = (int(v) for v in font.getbbox(label, anchor="la"))
    pad_x, pad_y = round(size * LABEL_PAD_X), round(size * LABEL_PAD_Y)
    # Even sides: the overlay lands on whole 2x2 chroma blocks of yuv420p.
    w = (right - left + 2 * pad_x + 1) // 2 * 2
    h = (bottom - top + 2 * pad_y + 1) // 2 * 2
    image = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, w - 1, h - 1), h // 2, fill=LABEL_FILL)
    # Centre the ink, not the advance box.
    draw.text(((w - (right - left)) // 2 - left, (h - (bottom - top)) // 2 - top), label,
              font=font, fill=LABEL_TEXT, anchor="la")
    return image


def label_position(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """Where the label's top-left goes: the top-right corner, LABEL_MARGIN_SHARE of the width
    in from both edges, but never lower than the top of the title-safe area, since the
    local renderer's text blocks (service.providers.layout) fill that area's full width and
    may start at its top: above it, the label can never cover the title."""
    w, h = size
    margin = round(width * LABEL_MARGIN_SHARE)
    top_room = safe_area(width, height).top - h
    x = max(0, width - margin - w)
    y = max(0, min(margin, top_room))
    return x // 2 * 2, y // 2 * 2


def _write_label(label: str, font_file: str, height: int, path: Path) -> Image.Image:
    image = label_image(label, font_file, height)
    image.save(path, format="PNG")
    return image
