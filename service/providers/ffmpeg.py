"""The default provider: renders each part locally as a short animated ad with ffmpeg.

Pillow draws every still layer once (a gradient background larger than the frame, soft
accent shapes, one image per text block laid out by service.providers.layout) into files;
ffmpeg animates them with cheap per-frame expressions: the background pans, the shapes
drift, the text blocks fade and slide in one after another, a light sweep crosses the
frame. User text only ever reaches ffmpeg as pixels in an image file, so nothing in a
filter string needs escaping. Chinese text needs a CJK font, which `make bootstrap`
installs.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from service import errors, media
from service.providers.base import ClipResult, PartJob, PartRole
from service.providers.layout import Block, Layout, PartTexts, layout_part, load_font
from service.settings import Settings

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)
# Clips are an intermediate: the merge re-encodes them at veryfast. ultrafast at a low CRF
# keeps their quality (they are just bigger) at about half of superfast's encoding time.
PRESET = "ultrafast"
CRF = 20
# The background is this much larger than the frame on each side: room for its pan.
PAN_X, PAN_Y = 0.06, 0.04
# When each text block starts to fade and slide in (s), and for how long.
REVEAL_AT = {"kicker": 0.1, "title": 0.3, "subtitle": 0.65, "cta": 1.0}
REVEAL_S = 0.5
FADE_STEPS = 10  # frames of a text block's fade-in (20 a second: smooth enough)
END_FADE_S = 0.4

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Look:
    top: RGB  # gradient, top-left
    bottom: RGB  # gradient, bottom-right
    accent: RGB  # call-to-action pill, subtitle tint, a drifting shape


LOOKS = {
    PartRole.OPENING: Look((30, 58, 138), (124, 58, 237), (251, 191, 36)),
    PartRole.CLOSING: Look((154, 52, 18), (190, 18, 60), (253, 224, 71)),
    PartRole.WHOLE: Look((76, 29, 149), (190, 24, 93), (251, 191, 36)),
}
# Selling-point parts cycle through these so that neighbouring parts are told apart.
SELLING_LOOKS = (
    Look((15, 118, 110), (30, 58, 138), (253, 230, 138)),
    Look((157, 23, 77), (76, 29, 149), (253, 230, 138)),
    Look((21, 128, 61), (15, 118, 110), (254, 240, 138)),
)
SELLING_KICKERS = ("核心亮点", "品质之选", "用心之作")


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


def part_texts(job: PartJob) -> PartTexts:
    """The part's copy by its role: the opening introduces the product, selling points
    lead with the theme, the closing asks to buy."""
    indicator = f"{job.index + 1}/{job.count}" if job.count > 1 else ""
    match job.role:
        case PartRole.OPENING:
            return PartTexts("新品上市", job.product_name, job.theme, "", indicator)
        case PartRole.SELLING_POINT:
            kicker = SELLING_KICKERS[(job.index - 1) % len(SELLING_KICKERS)]
            return PartTexts(kicker, job.theme, job.product_name, "", indicator)
        case PartRole.CLOSING:
            return PartTexts("心动不如行动", job.product_name, job.theme, "立即选购", indicator)
        case _:
            return PartTexts("新品上市", job.product_name, job.theme, "立即选购", indicator)


def part_look(job: PartJob) -> Look:
    if job.role is PartRole.SELLING_POINT:
        return SELLING_LOOKS[(job.index - 1) % len(SELLING_LOOKS)]
    return LOOKS[job.role]


class FfmpegProvider:
    name = "ffmpeg"
    remote = False  # no billed task elsewhere: nothing for the parts ledger to record

    def __init__(self, *, width: int, height: int, fps: int, font_file: str,
                 label: str = "") -> None:
        self.width, self.height, self.fps = width, height, fps
        self.font_file = font_file
        self.label = label  # the visible AI label the merge puts on the video; "" for none

    @classmethod
    def from_settings(cls, settings: Settings) -> FfmpegProvider:
        return cls(width=settings.video_width, height=settings.video_height,
                   fps=settings.video_fps, font_file=find_font(settings.video_font_file),
                   label=settings.video_ai_label)

    async def create_clip(self, job: PartJob) -> str | None:
        return None  # rendered locally by fetch_clip: no remote task

    async def fetch_clip(self, job: PartJob, remote_id: str | None, dest: Path) -> ClipResult:
        with tempfile.TemporaryDirectory(prefix="part-", dir=dest.resolve().parent) as tmp:
            # Pillow work takes tens of ms: off the event loop, which keeps the lease alive.
            args = await asyncio.to_thread(self._prepare, job, Path(tmp))
            out = Path(tmp, "part.mp4")
            await media.run_ffmpeg([*args, str(out)])
            os.replace(out, dest)
        return ClipResult()

    async def merge(self, parts: list[Path], lengths_s: list[int], dest: Path) -> None:
        await media.merge_clips(parts, lengths_s, dest, width=self.width, height=self.height,
                                fps=self.fps, label=self.label, font_file=self.font_file)

    async def close(self) -> None:
        return None  # holds nothing open

    def layout(self, job: PartJob) -> Layout:
        return layout_part(self.width, self.height, self.font_file, part_texts(job))

    def _prepare(self, job: PartJob, tmp: Path) -> list[str]:
        """Draw the layers into tmp; the ffmpeg arguments that animate them (no output).

        Layers go to ffmpeg as raw RGBA files: writing bytes costs nothing next to PNG
        encoding. Only the background is looped into a stream of frames; every other layer
        is a single frame (or a few fade steps) that overlay holds after its last frame
        (eof_action=repeat), since each looped stream costs ~0.4 ms a frame in ffmpeg.
        """
        w, h, fps = self.width, self.height, self.fps
        frames, seconds = job.seconds * fps, job.seconds
        look, layout = part_look(job), self.layout(job)
        args: list[str] = []
        graph: list[str] = []
        stage = 0

        def layer(images: list[Image.Image], name: str, rate: float = 1, at: float = 0) -> int:
            path = tmp / f"{name}.rgba"
            with path.open("wb") as raw:
                for image in images:
                    raw.write(image.convert("RGBA").tobytes())
            width, height = images[0].size
            args.extend(["-f", "rawvideo", "-pix_fmt", "rgba", "-s", f"{width}x{height}",
                         "-framerate", f"{rate:g}", *(["-itsoffset", f"{at:g}"] if at else []),
                         "-i", str(path)])
            return args.count("-i") - 1

        def over(index: int, x: str, y: str, enable: str = "") -> None:
            nonlocal stage
            option = f":enable='{enable}'" if enable else ""
            graph.append(f"[{index}:v]format=yuva420p[l{index}];"
                         f"[s{stage}][l{index}]overlay=x='{x}':y='{y}':eval=frame:"
                         f"eof_action=repeat{option}[s{stage + 1}]")
            stage += 1

        pan_x, pan_y = round(w * PAN_X), round(h * PAN_Y)
        # Declared at the clip's rate: the graph's output takes its frame rate from here.
        bg = layer([_background(w, h, look)], "background", rate=fps)
        # Pan corner to corner with an ease in and out; odd parts pan the other way.
        ease = f"(0.5-0.5*cos(PI*t/{seconds}))"
        if job.index % 2:
            ease = f"(1-{ease})"
        graph.append(f"[{bg}:v]format=yuv420p,loop=loop=-1:size=1,setpts=N/{fps}/TB,"
                     f"trim=end_frame={frames},"
                     f"crop={w}:{h}:{2 * pan_x}*{ease}:{2 * pan_y}*{ease}[s0]")

        glow = layer([_glow(round(w * 0.9), (255, 255, 255), 70)], "glow")
        over(glow, f"{w * 0.45:.0f}-{w * 0.35:.0f}*t/{seconds}",
             f"{-h * 0.12:.0f}+{h * 0.03:.0f}*sin(t*1.3)")
        dot = layer([_glow(round(w * 0.55), look.accent, 80)], "dot")
        over(dot, f"{-w * 0.2:.0f}+{w * 0.25:.0f}*t/{seconds}",
             f"{h * 0.78:.0f}-{h * 0.05:.0f}*t/{seconds}")
        ring = layer([_ring(round(w * 0.2), max(2, w // 180))], "ring")
        over(ring, f"{w * 0.72:.0f}+{w * 0.04:.0f}*sin(t*1.7)",
             f"{h * 0.62:.0f}+{h * 0.03:.0f}*cos(t*1.3)")

        slide = round(h * 0.025)
        steps = max(2, min(FADE_STEPS, round(REVEAL_S * fps)))
        for block in layout.blocks:
            image, margin = _text_layer(block, self.font_file, look)
            x, y = block.box.left - margin, block.box.top - margin
            start = REVEAL_AT.get(block.name)
            if start is None:
                over(layer([image], f"text-{block.name}"), str(x), str(y))
                continue
            # The fade as a few frames of rising alpha from `start`; before its first
            # frame overlay passes the background through, after its last it holds it.
            index = layer(_fade_steps(image, steps), f"text-{block.name}",
                          rate=steps / REVEAL_S, at=start)
            # Ease out: fast at first, settling on the laid-out place.
            over(index, str(x), f"{y}+{slide}*pow(max(0,1-(t-{start})/{REVEAL_S}),2)")

        sweep_image = _sweep(round(w * 0.3), h)
        sweep, sweep_w = layer([sweep_image], "sweep"), sweep_image.width
        sweep_at, sweep_s = min(1.4, seconds * 0.3), 0.9
        over(sweep, f"{-sweep_w}+{w + sweep_w}*(t-{sweep_at})/{sweep_s}", "0",
             enable=f"between(t,{sweep_at},{sweep_at + sweep_s})")

        tail = ""
        if job.role in {PartRole.CLOSING, PartRole.WHOLE}:
            tail = f",fade=t=out:st={seconds - END_FADE_S}:d={END_FADE_S}"
        graph.append(f"[s{stage}]format=yuv420p{tail}[v]")
        return [*args, "-filter_complex", ";".join(graph), "-map", "[v]", "-an",
                "-frames:v", str(frames), "-r", str(fps),
                "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", "-f", "mp4"]


def _fade_steps(image: Image.Image, steps: int) -> list[Image.Image]:
    alpha = image.getchannel("A")
    out = []
    for i in range(1, steps + 1):
        frame = image.copy()
        frame.putalpha(alpha.point([a * i // steps for a in range(256)]))
        out.append(frame)
    return out


def _background(w: int, h: int, look: Look) -> Image.Image:
    """A diagonal gradient with a few soft bokeh circles, larger than the frame for the pan.
    Drawn small and scaled up: smooth, and much cheaper than blurring at full size."""
    bw, bh = w + 2 * round(w * PAN_X), h + 2 * round(h * PAN_Y)
    sw, sh = max(8, bw // 8), max(8, bh // 8)
    down = Image.linear_gradient("L")  # 0 at the top, 255 at the bottom
    ramp = Image.blend(down, down.transpose(Image.Transpose.TRANSPOSE), 0.5).resize((sw, sh))
    small = Image.composite(Image.new("RGB", (sw, sh), look.bottom),
                            Image.new("RGB", (sw, sh), look.top), ramp)
    bokeh = Image.new("RGBA", (sw, sh), (0, 0, 0, 0))
    draw = ImageDraw.Draw(bokeh)
    for fx, fy, fr, alpha in ((0.15, 0.2, 0.18, 28), (0.85, 0.35, 0.12, 22),
                              (0.3, 0.72, 0.22, 20), (0.8, 0.88, 0.16, 26)):
        r = fr * sw
        draw.ellipse((fx * sw - r, fy * sh - r, fx * sw + r, fy * sh + r),
                     fill=(255, 255, 255, alpha))
    bokeh = bokeh.filter(ImageFilter.GaussianBlur(max(1, sw // 60)))
    small = Image.alpha_composite(small.convert("RGBA"), bokeh).convert("RGB")
    return small.resize((bw, bh), Image.Resampling.BICUBIC)


def _glow(diameter: int, colour: RGB, alpha: int) -> Image.Image:
    small = max(8, diameter // 4)
    mask = Image.new("L", (small, small), 0)
    ImageDraw.Draw(mask).ellipse((small * 0.2, small * 0.2, small * 0.8, small * 0.8),
                                 fill=alpha)
    mask = mask.filter(ImageFilter.GaussianBlur(small * 0.12))
    image = Image.new("RGBA", (small, small), (*colour, 0))
    image.putalpha(mask)
    return image.resize((diameter, diameter), Image.Resampling.BICUBIC)


def _ring(diameter: int, width: int) -> Image.Image:
    image = Image.new("RGBA", (diameter, diameter), (255, 255, 255, 0))
    ImageDraw.Draw(image).ellipse((width, width, diameter - width, diameter - width),
                                  outline=(255, 255, 255, 110), width=width)
    return image


def _sweep(band: int, h: int) -> Image.Image:
    """A band of light leaning right, brightest in its middle; band + h/4 wide."""
    slant = h // 4
    tent = Image.linear_gradient("L").rotate(90).resize((band, 1)).point(
        lambda v: round(60 * (1 - abs(v - 127.5) / 127.5)))
    mask = Image.new("L", (band + slant, h), 0)
    mask.paste(tent.resize((band, h)), (0, 0))
    # Row y is shifted right by (h - y) / 4: the band runs from bottom-left to top-right.
    mask = mask.transform(mask.size, Image.Transform.AFFINE, (1, 0.25, -slant, 0, 1, 0),
                          resample=Image.Resampling.BILINEAR)
    image = Image.new("RGBA", mask.size, (255, 255, 255, 0))
    image.putalpha(mask)
    return image


def _text_layer(block: Block, font_file: str, look: Look) -> tuple[Image.Image, int]:
    """The block drawn on a transparent layer, with `margin` pixels around its box for the
    shadow; the layer goes at (box.left - margin, box.top - margin)."""
    size, box = block.font_size, block.box
    margin = max(2, round(size * 0.35))
    layer = Image.new("RGBA", (box.width + 2 * margin, box.height + 2 * margin), (0, 0, 0, 0))
    pill = (margin, margin, margin + box.width - 1, margin + box.height - 1)
    radius = box.height // 2
    fill: tuple[int, ...] = (255, 255, 255)
    if block.name == "cta":
        fill = (31, 41, 55)
        _shadow(layer, lambda d: d.rounded_rectangle(pill, radius, fill=(0, 0, 0, 120)), size)
        ImageDraw.Draw(layer).rounded_rectangle(pill, radius, fill=(*look.accent, 255))
    elif block.name == "kicker":
        ImageDraw.Draw(layer).rounded_rectangle(pill, radius, fill=(255, 255, 255, 46),
                                                outline=(255, 255, 255, 150),
                                                width=max(1, size // 20))
    elif block.name == "subtitle":
        fill = _tint(look.accent)
    elif block.name == "indicator":
        fill = (226, 232, 240, 190)
    font = load_font(font_file, size)
    dx, dy = margin - box.left, margin - box.top

    def text(draw: ImageDraw.ImageDraw, colour: tuple[int, ...],
             outline: tuple[int, ...]) -> None:
        for line in block.lines:
            draw.text((line.x + dx, line.y + dy), line.text, font=font, fill=colour,
                      stroke_width=block.stroke, stroke_fill=outline, anchor="la")

    if block.name not in {"cta", "kicker"}:
        _shadow(layer, lambda d: text(d, (0, 0, 0, 150), (0, 0, 0, 150)), size)
    # Outline in the fill colour: a faux bold, as the CJK font has no bold face.
    text(ImageDraw.Draw(layer), fill, fill)
    return layer, margin


def _shadow(layer: Image.Image, paint: Callable[[ImageDraw.ImageDraw], object],
            size: int) -> None:
    """Paint a soft drop shadow onto layer (paint draws the shape in black)."""
    shadow = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    paint(ImageDraw.Draw(shadow))
    shadow = shadow.filter(ImageFilter.GaussianBlur(max(1, size * 0.08)))
    layer.alpha_composite(shadow, (0, max(1, round(size * 0.05))))


def _tint(colour: RGB) -> RGB:
    """The accent lightened halfway to white: legible on every background."""
    r, g, b = (round(c + (255 - c) * 0.5) for c in colour)
    return r, g, b
