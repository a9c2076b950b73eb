"""The local renderer: text layout geometry, rendered clips and the normalising merge.

No database: these tests request none of conftest's session fixtures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import time
from pathlib import Path

import av
import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat

from service import errors, media
from service.providers.ark import ArkProvider
from service.providers.base import ClipResult, PartJob, PartRole
from service.providers.ffmpeg import FfmpegProvider, find_font, part_texts
from service.providers.layout import (
    ELLIPSIS,
    BlockSpec,
    Box,
    Layout,
    PartTexts,
    layout_blocks,
    layout_part,
    load_font,
    safe_area,
)
from service.settings import Settings

FONT = find_font()
NAME_60 = ("超级无敌大容量不锈钢真空保温杯男女学生便携水杯办公室泡茶杯子车载户外运动水壶礼盒装"
           "送滤网茶隔长效保温二十四小时恒温三件套")
NAME_100 = ("德国进口高端智能恒温电热水壶家用大容量一点五升全自动断电保温一体食品级不锈钢内胆"
            "快速烧水静音防干烧母婴级冲奶泡茶咖啡多段控温触控面板三年质保全国联保顺丰包邮赠"
            "送精美礼盒限时抢购名额有限先到先得欢迎选购")
THEME_100 = ("冬日暖心好礼，一杯热茶温暖整个季节；匠心工艺，品质生活从细节开始。"
             "无论是办公室还是户外旅行，随时随地享受恰到好处的温度，送给家人朋友的贴心之选，"
             "限时特惠，欢迎选购，好评如潮，值得拥有，期待您的光临与选")
MIXED = "Apple iPhone 15 Pro Max 超大屏幕5G智能手机 256GB 钛金属 Titanium Edition 官方正品"
TEXT_CASES = {
    "name-60-cjk": (NAME_60, "冬日温暖"),
    "name-100-cjk": (NAME_100, "冬日温暖"),
    "name-40-W": ("W" * 40, "冬日温暖"),
    "mixed-cjk-latin": (MIXED, "Smart life 智慧生活 every day"),
    "long-theme-long-name": (NAME_100, THEME_100),
    "short": ("茶", "暖"),
    "missing-glyphs": ("保温杯😀𠀀\u200b\u0301x Ǆ ﷽", "🎉冬日温暖"),
}
# Cases that broke before and must now show every character, at the default frame size.
MUST_FIT = {"name-60-cjk", "name-100-cjk", "name-40-W", "mixed-cjk-latin",
            "long-theme-long-name"}
ROLES = {  # (index, count) giving each role
    PartRole.OPENING: (0, 3),
    PartRole.SELLING_POINT: (1, 3),
    PartRole.CLOSING: (2, 3),
    PartRole.WHOLE: (0, 1),
}
MAX_LINES = {"kicker": 1, "title": 6, "subtitle": 5, "cta": 1, "indicator": 1}
READABLE_PX_AT_720 = 28  # 14 pt on a 360 pt wide phone screen
INDICATOR_PX_AT_720 = 16


def job_for(role: PartRole, name: str, theme: str, seconds: int = 5) -> PartJob:
    index, count = ROLES[role]
    job = PartJob("task", name, theme, index, count, seconds)
    assert job.role is role
    return job


def ink_box(layout: Layout, block_name: str) -> tuple[int, int, int, int] | None:
    """The block's pixels as Pillow actually draws them (not the layout's own boxes)."""
    block = layout.block(block_name)
    assert block is not None
    canvas = Image.new("L", (layout.width, layout.height), 0)
    draw = ImageDraw.Draw(canvas)
    font = load_font(FONT, block.font_size)
    for line in block.lines:
        draw.text((line.x, line.y), line.text, font=font, fill=255, anchor="la",
                  stroke_width=block.stroke, stroke_fill=255)
    return canvas.getbbox()


def squeeze(text: str) -> str:
    return "".join(text.split())


def check_layout(layout: Layout, texts: PartTexts) -> None:
    unit = min(layout.width, layout.height * 9 / 16)
    margin_x, margin_y = layout.width * 0.08, layout.height * 0.10
    safe = layout.safe
    assert safe.left >= margin_x - 1 and safe.right <= layout.width - margin_x + 1
    assert safe.top >= margin_y - 1 and safe.bottom <= layout.height - margin_y + 1
    wanted = {name: text for name, text in vars(texts).items() if text.strip()}
    assert {b.name for b in layout.blocks} == set(wanted)
    for block in layout.blocks:
        assert safe.contains(block.box), (block.name, block.box, safe)
        for line in block.lines:
            assert block.box.contains(line.box), (block.name, line)
        drawn = ink_box(layout, block.name)
        assert drawn is not None, f"{block.name} draws nothing"
        left, top, right, bottom = drawn
        assert (safe.left <= left and right <= safe.right and safe.top <= top
                and bottom <= safe.bottom), (block.name, drawn, safe)
        assert 1 <= len(block.lines) <= MAX_LINES[block.name], (block.name, block.lines)
        least = INDICATOR_PX_AT_720 if block.name == "indicator" else READABLE_PX_AT_720
        assert block.font_size >= least * unit / 720 - 1, (block.name, block.font_size)
        # Every character is shown, in order, or the block ends in an ellipsis.
        original, shown = squeeze(wanted[block.name]), squeeze(block.shown)
        if block.truncated:
            assert shown.endswith(ELLIPSIS)
            assert original.startswith(shown[:-1]) and len(shown) - 1 < len(original)
        else:
            assert shown == original, (block.name, block.lines)
    for a, b in itertools.combinations(layout.blocks, 2):
        assert not a.box.overlaps(b.box), (a.name, a.box, b.name, b.box)
        # Also in drawn pixels, with the gap the boxes leave.
        ink_a, ink_b = ink_box(layout, a.name), ink_box(layout, b.name)
        assert ink_a and ink_b
        assert ink_a[3] <= ink_b[1] or ink_b[3] <= ink_a[1], (a.name, ink_a, b.name, ink_b)


@pytest.mark.parametrize("role", list(ROLES), ids=str)
@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_part_layout_fits_the_safe_area(case: str, role: PartRole) -> None:
    name, theme = TEXT_CASES[case]
    texts = part_texts(job_for(role, name, theme))
    layout = layout_part(720, 1280, FONT, texts)
    check_layout(layout, texts)
    if case in MUST_FIT:
        assert not any(b.truncated for b in layout.blocks), \
            [(b.name, b.lines) for b in layout.blocks if b.truncated]
    # The product name and the theme are shown in every part, whatever the role.
    shown = [squeeze(b.shown) for b in layout.blocks]
    assert squeeze(name)[:4] in "".join(shown) and squeeze(theme)[:1] in "".join(shown)


@pytest.mark.parametrize("size", [(1080, 1920), (480, 854), (1280, 720), (720, 720)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("case", ["name-60-cjk", "long-theme-long-name", "name-40-W"])
def test_layout_fits_other_frame_sizes(case: str, size: tuple[int, int]) -> None:
    name, theme = TEXT_CASES[case]
    texts = part_texts(job_for(PartRole.CLOSING, name, theme))
    check_layout(layout_part(*size, FONT, texts), texts)


def test_sixty_character_name_stays_clear_of_theme_and_label() -> None:
    """The old renderer wrapped this name into 7 lines over the theme and the "1/3"."""
    texts = part_texts(job_for(PartRole.OPENING, NAME_60, "冬日温暖"))
    layout = layout_part(720, 1280, FONT, texts)
    title, subtitle, indicator = (layout.block(n) for n in ("title", "subtitle", "indicator"))
    assert title and subtitle and indicator
    assert len(title.lines) <= 6
    assert title.box.bottom < subtitle.box.top < subtitle.box.bottom < indicator.box.top
    assert title.font_size >= 40  # room was there: it must not shrink to the minimum


def test_latin_breaks_at_spaces_and_cjk_punctuation_never_starts_a_line() -> None:
    words = "Stainless Steel Vacuum Insulated Travel Bottle With Tea Infuser"
    texts = PartTexts("", words, "冬日温暖，一杯热茶，暖人心。" * 6)
    layout = layout_part(720, 1280, FONT, texts)
    title, subtitle = layout.block("title"), layout.block("subtitle")
    assert title and subtitle and len(title.lines) > 1
    for line in title.lines:
        assert set(line.text.split()) <= set(words.split()), line.text
    assert len(subtitle.lines) > 1
    for line in subtitle.lines:
        assert line.text[0] not in "，。", line.text


def test_block_too_long_for_its_lines_is_cut_with_an_ellipsis() -> None:
    spec = BlockSpec("title", "超长商品名称" * 20, max_size=60, min_size=30, max_lines=2,
                     budget=0.3)
    layout = layout_blocks(720, 1280, FONT, [spec])
    (block,) = layout.blocks
    assert block.truncated and block.font_size == 30
    assert len(block.lines) == 2 and block.lines[-1].text.endswith(ELLIPSIS)
    assert (spec.text).startswith(block.shown[:-1])
    assert layout.safe.contains(block.box)
    assert block.box.height <= round(layout.safe.height * 0.3)


def test_over_long_word_is_broken_to_fit() -> None:
    layout = layout_blocks(720, 1280, FONT, [BlockSpec("title", "W" * 200, 60, 30, 9, 0.9)])
    (block,) = layout.blocks
    assert len(block.lines) > 2 and block.shown == "W" * 200
    assert all(layout.safe.left <= ln.box.left and ln.box.right <= layout.safe.right
               for ln in block.lines)


# ---- ffmpeg ----

def probe(path: Path, at: tuple[int, ...] = ()) -> dict:
    """The video stream's facts, decoding every frame; `images` holds the frames `at`."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "pix_fmt": stream.codec_context.pix_fmt,
            "size": (stream.codec_context.width, stream.codec_context.height),
            "sar": stream.sample_aspect_ratio,
            "rate": stream.average_rate,
            "frames": len(frames),
            "audio": len(container.streams.audio),
            # Last frame's end: the video's real length, whatever the container says.
            "duration": float(frames[-1].time + 1 / stream.average_rate),
            "images": {i: frames[i].to_image() for i in at if i < len(frames)},
        }


async def test_rendered_part_is_an_animated_h264_clip_of_exact_length(tmp_path: Path) -> None:
    provider = FfmpegProvider(width=720, height=1280, fps=25, font_file=FONT)
    assert provider.name == "ffmpeg" and provider.remote is False
    # Filter-syntax characters in user text: they must never reach a filter string.
    name = "保温杯 ' : ; [x] %{pts} \\ 100% " + NAME_60
    job = job_for(PartRole.CLOSING, name, "冬日温暖", seconds=3)
    assert await provider.create_clip(job) is None
    dest = tmp_path / "part-000.mp4"
    result = await provider.fetch_clip(job, None, dest)
    assert result == ClipResult()
    assert [p.name for p in tmp_path.iterdir()] == ["part-000.mp4"]  # no temp files left
    info = probe(dest, at=(0, 60))
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["size"] == (720, 1280)
    assert info["frames"] == 75 and info["rate"] == 25
    assert info["duration"] == pytest.approx(3.0, abs=1e-6)
    assert info["audio"] == 0
    # It moves: text comes in and the background pans, so frames differ.
    first, middle = info["images"][0], info["images"][60]
    assert _mean_abs_diff(first, middle) > 3
    # Text is in: the centre of the frame has near-white pixels (the title) by then.
    centre = middle.crop((58, 300, 662, 900)).convert("L")
    assert centre.getextrema()[1] > 240


async def test_merge_normalises_mixed_clips(tmp_path: Path) -> None:
    landscape, portrait, short = (tmp_path / n for n in ("a.mp4", "b.mp4", "c.mp4"))
    # 16:9 at 30 fps, longer than wanted; 9:16 at 24 fps with audio; square at 15 fps, short.
    await media.run_ffmpeg(["-f", "lavfi", "-i", "testsrc=s=640x360:r=30:d=3",
                            "-c:v", "libx264", "-preset", "ultrafast", str(landscape)])
    await media.run_ffmpeg(["-f", "lavfi", "-i", "testsrc=s=1080x1920:r=24:d=2",
                            "-f", "lavfi", "-i", "sine=d=2", "-c:v", "libx264",
                            "-preset", "ultrafast", "-c:a", "aac", "-shortest", str(portrait)])
    await media.run_ffmpeg(["-f", "lavfi", "-i", "testsrc=s=300x300:r=15:d=1",
                            "-c:v", "libx264", "-preset", "ultrafast", str(short)])
    dest = tmp_path / "out" / "video.mp4"
    dest.parent.mkdir()
    await media.merge_clips([landscape, portrait, short], [2, 2, 2], dest, width=720,
                            height=1280, fps=25)
    assert [p.name for p in dest.parent.iterdir()] == ["video.mp4"]
    info = probe(dest, at=(37, 82))
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["size"] == (720, 1280) and info["sar"] in (None, 1)
    assert info["rate"] == 25 and info["frames"] == 150
    assert info["duration"] == pytest.approx(6.0, abs=1e-6)
    assert info["audio"] == 0
    # Order and letterboxing: the 16:9 clip first, with black bars above and below; the 9:16
    # clip fills the frame.
    bars = info["images"][37]  # t = 1.5 s: the landscape clip
    full = info["images"][82]  # t = 3.3 s: the portrait clip
    assert _mean(bars.crop((0, 0, 720, 200))) < 20
    assert _mean(bars.crop((0, 540, 720, 740))) > 40
    assert _mean(full.crop((0, 0, 720, 200))) > 40


async def test_merge_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-video.mp4"
    bogus.write_bytes(b"no video here")
    dest = tmp_path / "video.mp4"
    with pytest.raises(errors.ProviderError) as caught:
        await media.merge_clips([bogus], [2], dest, width=720, height=1280, fps=25)
    assert str(tmp_path) not in str(caught.value)  # ffmpeg's stderr stays in the log
    assert [p.name for p in tmp_path.iterdir()] == ["not-a-video.mp4"]


async def test_run_ffmpeg_times_out() -> None:
    with pytest.raises(errors.ProviderError, match="longer than"):
        await media.run_ffmpeg(["-re", "-f", "lavfi", "-i", "testsrc=d=60", "-f", "null", "-"],
                               timeout_s=0.5)


async def test_cancelled_run_ffmpeg_kills_ffmpeg() -> None:
    # A 60 s real-time job: cancellation returns at once only if ffmpeg is killed.
    task = asyncio.create_task(media.run_ffmpeg(
        ["-re", "-f", "lavfi", "-i", "testsrc=d=60", "-f", "null", "-"]))
    await asyncio.sleep(0.5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5


# ---- the AI label ----

LABEL = "AI生成"


def label_box(width: int, height: int, label: str = LABEL) -> Box:
    size = media.label_image(label, FONT, height).size
    x, y = media.label_position(width, height, size)
    return Box(x, y, x + size[0], y + size[1])


@pytest.mark.parametrize("size", [(720, 1280), (1080, 1920), (480, 854), (1280, 720),
                                  (720, 720)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_label_sits_top_right_above_the_text(size: tuple[int, int]) -> None:
    """The label is in the top-right corner, 3% of the width in, text 2.6% of the height,
    and wholly above the title-safe area: no text block of the renderer can be under it,
    even a layout that fills the safe area to its top."""
    width, height = size
    box = label_box(width, height)
    margin = width * media.LABEL_MARGIN_SHARE
    assert abs((width - box.right) - margin) <= 2 and 0 <= box.top <= margin + 1
    assert height * 0.026 < box.height < height * 0.06  # text plus its pill's padding
    assert box.bottom <= safe_area(width, height).top
    name, theme = TEXT_CASES["long-theme-long-name"]
    for role in ROLES:
        layout = layout_part(width, height, FONT, part_texts(job_for(role, name, theme)))
        assert not any(block.box.overlaps(box) for block in layout.blocks), role


async def labelled_and_plain(tmp_path: Path) -> tuple[Path, Path]:
    """Two 1 s clips (a dark plain one, then testsrc) merged with the label and without."""
    dark, pattern = tmp_path / "dark.mp4", tmp_path / "pattern.mp4"
    await media.run_ffmpeg(["-f", "lavfi", "-i", "color=c=0x203040:s=720x1280:r=25:d=1",
                            "-c:v", "libx264", "-preset", "ultrafast", str(dark)])
    await media.run_ffmpeg(["-f", "lavfi", "-i", "testsrc=s=720x1280:r=25:d=1",
                            "-c:v", "libx264", "-preset", "ultrafast", str(pattern)])
    out = tmp_path / "out"
    out.mkdir()
    labelled, plain = out / "labelled.mp4", out / "plain.mp4"
    await media.merge_clips([dark, pattern], [1, 1], labelled, width=720, height=1280,
                            fps=25, label=LABEL, font_file=FONT)
    await media.merge_clips([dark, pattern], [1, 1], plain, width=720, height=1280, fps=25)
    assert sorted(p.name for p in out.iterdir()) == ["labelled.mp4", "plain.mp4"]  # no PNG
    return labelled, plain


def ffmetadata(path: Path) -> dict[str, str]:
    """The file's global tags as ffmpeg reads them (there is no ffprobe)."""
    text = subprocess.run([media.ffmpeg_exe(), "-v", "error", "-i", str(path),
                           "-f", "ffmetadata", "-"], capture_output=True, check=True,
                          text=True).stdout
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith(";")]
    return dict(ln.split("=", 1) for ln in lines)


async def test_label_is_drawn_over_the_whole_video_and_nowhere_else(tmp_path: Path) -> None:
    """In a frame of each clip the label's corner differs clearly from the unlabelled merge
    and holds near-white text pixels, while the rest of the frame is unchanged; the overlay
    changes neither the frame count nor the length."""
    labelled, plain = await labelled_and_plain(tmp_path)
    at = (12, 37)  # the middle of the dark clip, the middle of the testsrc clip
    with_label, without = probe(labelled, at=at), probe(plain, at=at)
    for key in ("size", "rate", "frames", "duration", "pix_fmt"):
        assert with_label[key] == without[key], key
    assert with_label["frames"] == 50
    box = label_box(720, 1280)
    corner = (box.left, box.top, box.right, box.bottom)
    for i in at:
        a, b = with_label["images"][i], without["images"][i]
        assert _mean_abs_diff(a.crop(corner), b.crop(corner)) > 15, i
        # Changed pixels stay in the label's box (a little slack for compression).
        changed = ImageChops.difference(a.convert("L"), b.convert("L")).point(
            lambda v: 255 if v > 24 else 0).getbbox()
        assert changed is not None
        assert (changed[0] >= box.left - 4 and changed[1] >= box.top - 4
                and changed[2] <= box.right + 4 and changed[3] <= box.bottom + 4), changed
        far = (0, 640, 360, 1280)  # bottom left
        assert _mean_abs_diff(a.crop(far), b.crop(far)) < 1.5, i
    dark_labelled = with_label["images"][12].crop(corner).convert("L")
    dark_plain = without["images"][12].crop(corner).convert("L")
    assert dark_labelled.getextrema()[1] > 200  # the white text
    assert dark_plain.getextrema()[1] < 100


async def test_label_is_also_in_the_metadata_and_absent_when_off(tmp_path: Path) -> None:
    """The labelled video carries the implicit label: a comment and a GB 45438-2025 style
    AIGC tag (kept as a custom mp4 key), with no doubled ftyp keys; label="" writes none."""
    labelled, plain = await labelled_and_plain(tmp_path)
    tags = ffmetadata(labelled)
    assert LABEL in tags["comment"]
    assert json.loads(tags["AIGC"]) == {"Label": "1", "ContentProducer": "video-tasks"}
    assert not any("\\;" in value for value in tags.values()), tags  # e.g. isom\;isom
    plain_tags = ffmetadata(plain)
    assert "AIGC" not in plain_tags and "comment" not in plain_tags, plain_tags


def test_providers_take_the_label_from_settings() -> None:
    """VIDEO_AI_LABEL reaches both real providers (Ark gets a font for it); empty: none."""
    assert FfmpegProvider.from_settings(Settings()).label == LABEL
    assert FfmpegProvider.from_settings(Settings(video_ai_label="")).label == ""
    ark = ArkProvider.from_settings(Settings(video_provider="ark", ark_api_key="key"))
    assert ark.label == LABEL and ark.font_file == FONT
    off = ArkProvider.from_settings(Settings(video_provider="ark", ark_api_key="key",
                                             video_ai_label=""))
    assert off.label == ""


async def test_provider_merge_labels_the_video(tmp_path: Path) -> None:
    """FfmpegProvider.merge passes its label and font on to the merge."""
    clip = tmp_path / "part.mp4"
    await media.run_ffmpeg(["-f", "lavfi", "-i", "color=c=black:s=360x640:r=25:d=1",
                            "-c:v", "libx264", "-preset", "ultrafast", str(clip)])
    provider = FfmpegProvider(width=360, height=640, fps=25, font_file=FONT, label=LABEL)
    dest = tmp_path / "video.mp4"
    await provider.merge([clip], [1], dest)
    assert "AIGC" in ffmetadata(dest)
    box = label_box(360, 640)
    frame = probe(dest, at=(0,))["images"][0]
    assert frame.crop((box.left, box.top, box.right, box.bottom)).convert(
        "L").getextrema()[1] > 200


async def test_label_without_a_font_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="font_file"):
        await media.merge_clips([tmp_path / "a.mp4"], [1], tmp_path / "v.mp4", width=720,
                                height=1280, fps=25, label=LABEL)


def _mean(image: Image.Image) -> float:
    return ImageStat.Stat(image.convert("L")).mean[0]


def _mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return _mean(ImageChops.difference(a.convert("L"), b.convert("L")))
