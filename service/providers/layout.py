"""Text layout for the local renderer: where each block of a part's text goes.

Pure geometry from Pillow's font metrics (no ffmpeg): each block is wrapped by measured
pixel width and shrunk step by step until it fits its share of the title-safe area; what
cannot fit even at the block's minimum size is cut with an ellipsis instead of overflowing.
Blocks are stacked, so they never overlap and never leave the safe area.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

from PIL import ImageFont

ELLIPSIS = "…"
# Safe area: 8% left/right; 10% top/bottom is the classic title-safe margin and also keeps
# text clear of the phone UI drawn over the top and bottom of a portrait video.
MARGIN_X = 0.08
MARGIN_Y = 0.10
# Space between stacked blocks, as a share of the safe area's height.
GAP = 0.02
LINE_SPACING = 1.32  # line pitch / font size (WenQuanYi's ascent + descent is 1.27)
SIZE_STEP = 2
# Below a block's minimum size we only shrink further when even one truncated line cannot
# fit (absurdly small frames): dropping to this floor beats overflowing the frame.
FLOOR_SIZE = 4
# Kinsoku: these never start a line (they stick to what is before them) ...
NO_LINE_START = frozenset("，。、；：！？）】》」』〉〕”’…—～·%,.;:!?)]}")
# ... and these never end one (they stick to what follows).
NO_LINE_END = frozenset("（【《「『〈〔“‘([{")
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")  # zero-width joiner, variation selectors


@dataclass(frozen=True)
class Box:
    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def contains(self, other: Box) -> bool:
        return (self.left <= other.left and self.top <= other.top
                and other.right <= self.right and other.bottom <= self.bottom)

    def overlaps(self, other: Box) -> bool:
        return (self.left < other.right and other.left < self.right
                and self.top < other.bottom and other.top < self.bottom)

    def shift(self, dx: int, dy: int) -> Box:
        return Box(self.left + dx, self.top + dy, self.right + dx, self.bottom + dy)

    def union(self, other: Box) -> Box:
        return Box(min(self.left, other.left), min(self.top, other.top),
                   max(self.right, other.right), max(self.bottom, other.bottom))


@dataclass(frozen=True)
class Line:
    text: str
    x: int  # where Pillow draws it: ImageDraw.text((x, y), text, anchor="la")
    y: int
    box: Box  # ink box including the stroke, and the font's full ascent..descent


@dataclass(frozen=True)
class BlockSpec:
    name: str
    text: str
    max_size: int
    min_size: int
    max_lines: int
    budget: float  # share of the safe area's height this block may take
    stroke: float = 0.0  # outline width / font size (a faux bold: the CJK font has no bold)
    pad_x: float = 0.0  # padding around the text / font size (room for a pill background)
    pad_y: float = 0.0
    bottom: bool = False  # pinned to the bottom of the safe area, not in the stacked group


@dataclass(frozen=True)
class Block:
    name: str
    text: str  # the whole text asked for; lines hold what is shown
    font_size: int
    stroke: int
    lines: tuple[Line, ...]
    box: Box  # the lines' boxes plus padding
    truncated: bool

    @property
    def shown(self) -> str:
        return "".join(line.text for line in self.lines)

    def shift(self, dx: int, dy: int) -> Block:
        lines = tuple(replace(ln, x=ln.x + dx, y=ln.y + dy, box=ln.box.shift(dx, dy))
                      for ln in self.lines)
        return replace(self, lines=lines, box=self.box.shift(dx, dy))


@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    safe: Box
    blocks: tuple[Block, ...]

    def block(self, name: str) -> Block | None:
        return next((b for b in self.blocks if b.name == name), None)


@dataclass(frozen=True)
class PartTexts:
    """What a part says; empty strings are left out."""

    kicker: str  # the role's caption, e.g. 新品上市
    title: str
    subtitle: str
    cta: str = ""
    indicator: str = ""  # e.g. 1/3


def safe_area(width: int, height: int) -> Box:
    mx, my = round(width * MARGIN_X), round(height * MARGIN_Y)
    return Box(mx, my, width - mx, height - my)


def layout_part(width: int, height: int, font_file: str, texts: PartTexts) -> Layout:
    """The standard part: kicker, title, subtitle and call to action stacked a little above
    the centre, the part indicator at the bottom."""
    # Sizes follow the frame's width, but never more than a 9:16 frame of its height would
    # allow, so a landscape frame does not get portrait-sized text.
    unit = min(width, height * 9 / 16)

    def px(share: float) -> int:
        return max(FLOOR_SIZE, round(unit * share))

    # Budgets add up to 0.94 with the gaps; the largest name (100 CJK characters, the API's
    # limit) fits the title's 6 lines at its minimum size on a 720-wide frame.
    specs = [
        BlockSpec("kicker", texts.kicker, px(0.056), px(0.039), 1, 0.08, pad_x=0.7, pad_y=0.25),
        BlockSpec("title", texts.title, px(0.105), px(0.045), 6, 0.40, stroke=0.02),
        BlockSpec("subtitle", texts.subtitle, px(0.065), px(0.039), 5, 0.24, stroke=0.02),
        BlockSpec("cta", texts.cta, px(0.058), px(0.039), 1, 0.10, pad_x=1.0, pad_y=0.35,
                  stroke=0.02),
        BlockSpec("indicator", texts.indicator, px(0.033), px(0.024), 1, 0.04, bottom=True),
    ]
    return layout_blocks(width, height, font_file, [s for s in specs if _clean(s.text)])


def layout_blocks(width: int, height: int, font_file: str, specs: Sequence[BlockSpec],
                  *, gap: float = GAP) -> Layout:
    """Fit each block into its budget, then stack them: the group above the centre, the
    `bottom` blocks at the bottom of the safe area. Blocks that get no room are dropped."""
    safe = safe_area(width, height)
    gap_px = round(safe.height * gap)
    fitted = {s.name: _fit(s, font_file, safe.width, round(safe.height * s.budget))
              for s in specs}
    # Height left over by short texts goes to blocks that had to shrink or were cut.
    for spec in specs:
        block = fitted[spec.name]
        if block is None or not (block.truncated or block.font_size < spec.max_size):
            continue
        used = sum(b.box.height for b in fitted.values() if b is not None)
        used += gap_px * (sum(b is not None for b in fitted.values()) - 1)
        spare = safe.height - used
        if spare > 0:
            bigger = _fit(spec, font_file, safe.width, block.box.height + spare)
            if bigger is not None:
                fitted[spec.name] = bigger

    group = [b for s in specs if not s.bottom and (b := fitted[s.name]) is not None]
    pinned = [b for s in specs if s.bottom and (b := fitted[s.name]) is not None]
    placed: list[Block] = []
    bottom = safe.bottom
    for block in reversed(pinned):
        placed.insert(0, block.shift(safe.left, bottom - block.box.bottom))
        bottom -= block.box.height + gap_px
    total = sum(b.box.height for b in group) + gap_px * max(0, len(group) - 1)
    # 45% of the free space above, 55% below: the eye expects the headline a bit high.
    y = safe.top + max(0, (bottom - safe.top - total) * 45 // 100)
    stacked: list[Block] = []
    for block in group:
        stacked.append(block.shift(safe.left, y - block.box.top))
        y += block.box.height + gap_px
    return Layout(width, height, safe, tuple(stacked + placed))


def _fit(spec: BlockSpec, font_file: str, width: int, height: int) -> Block | None:
    """The block at the largest size whose wrapped lines fit width x height; cut with an
    ellipsis at the minimum size if none does. Coordinates: the region's top-left is 0,0."""
    text = _clean(spec.text)
    if not text or width <= 0 or height <= 0:
        return None
    pieces = _pieces(text)
    for size in range(_largest_possible(spec, text, font_file, width, height),
                      spec.min_size - 1, -SIZE_STEP):
        block = _build(spec, text, font_file, size, width, height, pieces, truncate=False)
        if block is not None:
            return block
    for size in range(spec.min_size, FLOOR_SIZE - 1, -SIZE_STEP):
        block = _build(spec, text, font_file, size, width, height, pieces, truncate=True)
        if block is not None:
            return block
    return None


def _largest_possible(spec: BlockSpec, text: str, font_file: str, width: int,
                      height: int) -> int:
    """A size above which the text cannot fit, from its advance width alone: lines hold at
    most `width` each, so n lines of pitch p need n * width >= the text's width. Saves
    wrapping the text at every size from the maximum down (most of a layout's time)."""
    advance = load_font(font_file, 100).getlength(text) / 100  # per pixel of font size
    if advance <= 0:
        return spec.max_size
    # s * advance <= lines * width, lines <= max_lines, lines * s * LINE_SPACING <= height
    by_lines = spec.max_lines * width / advance
    by_area = (width * height / (advance * LINE_SPACING)) ** 0.5
    bound = int(min(by_lines, by_area)) + SIZE_STEP  # slack: ink is not advance
    if bound >= spec.max_size:
        return spec.max_size
    # Stay on the max_size - k * SIZE_STEP grid.
    steps = max(0, (spec.max_size - bound) // SIZE_STEP)
    return max(spec.min_size, spec.max_size - steps * SIZE_STEP)


def _build(spec: BlockSpec, text: str, font_file: str, size: int, width: int, height: int,
           pieces: list[str], *, truncate: bool) -> Block | None:
    font = load_font(font_file, size)
    stroke = round(size * spec.stroke)
    pad_x, pad_y = round(size * spec.pad_x), round(size * spec.pad_y)
    text_w = width - 2 * pad_x
    pitch = round(size * LINE_SPACING)
    ascent, descent = font.getmetrics()

    def ink(line: str) -> tuple[int, int, int, int]:
        left, top, right, bottom = font.getbbox(line, stroke_width=stroke, anchor="la")
        return int(left), int(top), int(right), int(bottom)

    def fits(line: str) -> bool:
        left, _, right, _ = ink(line)
        return right - left <= text_w

    lines = _wrap(pieces, fits)
    # How many lines the height allows; the box check below has the last word.
    room = (height - 2 * pad_y - (ascent + descent + 2 * stroke)) // pitch + 1
    keep = min(spec.max_lines, len(lines), room)
    truncated = False
    if keep < len(lines):
        if not truncate or keep <= 0:
            return None
        lines = [*lines[:keep - 1], _ellipsize(lines[keep - 1], fits)]
        truncated = True
    placed: list[Line] = []
    for i, text in enumerate(lines):
        left, top, right, bottom = ink(text)
        y = pad_y + stroke + i * pitch
        x = pad_x + (text_w - (right - left)) // 2 - left  # centre the ink, not the advance
        box = Box(x + left, y + min(top, -stroke), x + right,
                  y + max(bottom, ascent + descent + stroke))
        placed.append(Line(text, x, y, box))
    content = placed[0].box
    for placed_line in placed[1:]:
        content = content.union(placed_line.box)
    box = Box(content.left - pad_x, content.top - pad_y, content.right + pad_x,
              content.bottom + pad_y)
    if box.left < 0 or box.right > width or box.top < 0 or box.bottom > height:
        return None
    # Anchor the block's box at the region's top-left so stacking can move it whole.
    block = Block(spec.name, text, size, stroke, tuple(placed), box, truncated)
    return block.shift(0, -box.top)


def _ellipsize(line: str, fits: Callable[[str], bool]) -> str:
    clusters = _clusters(line)
    while clusters:
        candidate = "".join(clusters).rstrip() + ELLIPSIS
        if fits(candidate):
            return candidate
        clusters.pop()
    return ELLIPSIS


def _wrap(pieces: list[str], fits: Callable[[str], bool]) -> list[str]:
    """Greedy line filling by measured width; a piece wider than a line is broken between
    its characters. Widths are measured on whole lines, so kerning is counted."""
    lines: list[str] = []
    line = ""
    for piece in pieces:
        if piece == " ":
            if line:
                line += " "
            continue
        if fits(line + piece):
            line += piece
            continue
        if line.strip():
            lines.append(line.rstrip())
        line = ""
        if fits(piece):
            line = piece
            continue
        for cluster in _clusters(piece):
            if line and not fits(line + cluster):
                lines.append(line)
                line = cluster
            else:
                line += cluster
    if line.strip():
        lines.append(line.rstrip())
    return lines


def _pieces(text: str) -> list[str]:
    """Text cut where a line may break: each CJK character is a piece, a run of Latin
    letters (a word) is one, each space is one; kinsoku punctuation sticks to a neighbour."""
    pieces: list[str] = []
    word = ""
    for cluster in _clusters(text):
        if cluster == " " or _is_wide(cluster):
            if word:
                pieces.append(word)
                word = ""
            pieces.append(cluster)
        else:
            word += cluster
    if word:
        pieces.append(word)
    glued: list[str] = []
    for piece in pieces:
        after_text = bool(glued) and glued[-1] != " " and piece != " "
        if after_text and (piece[0] in NO_LINE_START or glued[-1][-1] in NO_LINE_END):
            glued[-1] += piece
        else:
            glued.append(piece)
    return glued


def _clusters(text: str) -> list[str]:
    """Characters with their combining marks and joiners: a line never breaks inside one."""
    clusters: list[str] = []
    for ch in text:
        if clusters and (unicodedata.category(ch).startswith("M") or ch in _JOINERS
                         or clusters[-1][-1] == "\u200d"):
            clusters[-1] += ch
        else:
            clusters.append(ch)
    return clusters


def _is_wide(cluster: str) -> bool:
    return unicodedata.east_asian_width(cluster[0]) in {"W", "F"}


def _clean(text: str) -> str:
    # Any run of whitespace (newlines, U+3000 ideographic space) becomes one space.
    return " ".join(text.split())


def load_font(font_file: str, size: int) -> ImageFont.FreeTypeFont:
    # One font object per thread: a FreeType face must not be used by two threads at once,
    # and renders run in worker threads (asyncio.to_thread).
    return _load_font(font_file, size, threading.get_ident())


@lru_cache(maxsize=256)
def _load_font(font_file: str, size: int, _thread: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_file, size)
