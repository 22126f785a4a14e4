"""Draw the pictures used by the offline sample snapshot.

Why this exists: the snapshot in ``snapshot/fandom`` needs images for its
infoboxes and ``[[File:...]]`` links, and the Reddit posts in
``snapshot/reddit`` link fan art (served by the sample server in place of
i.redd.it / preview.redd.it), but art from the real sites is not ours to
redistribute. Every picture here is drawn by this code instead, so the
images are our own work and anyone can rebuild the exact same files::

    python -m loretune.samples.draw

Drawing is deterministic (no randomness beyond a fixed seed), so re-running
produces identical PNGs. Shapes are drawn at twice the final size and scaled
down, which gives smooth edges while keeping each file small.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

SIZE = 128
SCALE = 2
IMAGES_DIR = Path(__file__).resolve().parent / "snapshot" / "fandom" / "images"
REDDIT_MEDIA_DIR = Path(__file__).resolve().parent / "snapshot" / "reddit" / "media"

Color = tuple[int, int, int]
Point = tuple[float, float]

BLACK: Color = (20, 20, 24)
WHITE: Color = (250, 250, 250)
METAL: Color = (190, 196, 206)
METAL_DARK: Color = (90, 96, 110)
SKIN: Color = (247, 214, 180)
PALE_SKIN: Color = (240, 226, 214)
RED: Color = (200, 30, 40)


class Pen:
    """A canvas that takes coordinates in final-image pixels (0..SIZE)."""

    def __init__(self, background: Color) -> None:
        self.image = Image.new("RGB", (SIZE * SCALE, SIZE * SCALE), background)
        self.draw = ImageDraw.Draw(self.image)

    @staticmethod
    def _pts(points: Iterable[Point]) -> list[Point]:
        return [(x * SCALE, y * SCALE) for x, y in points]

    @staticmethod
    def _box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * SCALE, y0 * SCALE, x1 * SCALE, y1 * SCALE]

    def ellipse(self, box: Sequence[float], fill: Color | None,
                outline: Color | None = None, width: float = 1) -> None:
        self.draw.ellipse(self._box(*box), fill=fill, outline=outline,
                          width=round(width * SCALE))

    def circle(self, cx: float, cy: float, r: float, fill: Color | None,
               outline: Color | None = None, width: float = 1) -> None:
        self.ellipse((cx - r, cy - r, cx + r, cy + r), fill, outline, width)

    def rect(self, box: Sequence[float], fill: Color | None,
             outline: Color | None = None, width: float = 1) -> None:
        self.draw.rectangle(self._box(*box), fill=fill, outline=outline,
                            width=round(width * SCALE))

    def polygon(self, points: Sequence[Point], fill: Color | None,
                outline: Color | None = None) -> None:
        self.draw.polygon(self._pts(points), fill=fill, outline=outline)

    def line(self, points: Sequence[Point], fill: Color, width: float = 1) -> None:
        self.draw.line(self._pts(points), fill=fill, width=round(width * SCALE),
                       joint="curve")

    def arc(self, box: Sequence[float], start: float, end: float, fill: Color,
            width: float = 1) -> None:
        self.draw.arc(self._box(*box), start, end, fill=fill,
                      width=round(width * SCALE))

    def finish(self) -> Image.Image:
        return self.image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------
# Small shared shapes
# --------------------------------------------------------------------------

def spiral(cx: float, cy: float, r: float, turns: float = 1.6,
           phase: float = 0.0, steps: int = 60) -> list[Point]:
    """Points of an Archimedean spiral growing from the centre outwards."""
    pts = []
    for i in range(steps + 1):
        t = i / steps
        a = phase + t * turns * 2 * math.pi
        pts.append((cx + r * t * math.cos(a), cy + r * t * math.sin(a)))
    return pts


def leaf_mark(pen: Pen, cx: float, cy: float, r: float, color: Color,
              width: float = 1.2) -> None:
    """The leaf-spiral village mark: a spiral with a pointed tail."""
    pts = spiral(cx, cy, r, turns=1.4, phase=math.pi * 0.6)
    pen.line(pts, color, width)
    ex, ey = pts[-1]
    pen.line([(ex, ey), (cx + r * 1.1, cy - r * 1.05)], color, width)
    pen.line([(cx + r * 1.1, cy - r * 1.05), (cx + r * 0.35, cy - r * 0.95)], color, width)


def sand_mark(pen: Pen, cx: float, cy: float, r: float, color: Color,
              width: float = 1.2) -> None:
    """An hourglass-like mark for the Village Hidden in the Sand."""
    pen.line([(cx - r, cy - r), (cx + r, cy - r), (cx - r, cy + r),
              (cx + r, cy + r), (cx - r, cy - r)], color, width)
    pen.circle(cx - r * 0.9, cy, r * 0.25, None, color, width * 0.8)
    pen.circle(cx + r * 0.9, cy, r * 0.25, None, color, width * 0.8)


def note_mark(pen: Pen, cx: float, cy: float, r: float, color: Color,
              width: float = 1.2) -> None:
    """A musical note for the Village Hidden in the Sound."""
    pen.ellipse((cx - r, cy + r * 0.2, cx - r * 0.1, cy + r), color)
    pen.line([(cx - r * 0.15, cy + r * 0.6), (cx - r * 0.15, cy - r)], color, width)
    pen.line([(cx - r * 0.15, cy - r), (cx + r, cy - r * 0.4)], color, width)


def oil_mark(pen: Pen, cx: float, cy: float, r: float, color: Color,
             width: float = 1.2) -> None:
    """A drop shape, standing in for the Toad Sage's 'oil' headpiece."""
    pen.polygon([(cx, cy - r), (cx + r * 0.7, cy + r * 0.2), (cx, cy + r),
                 (cx - r * 0.7, cy + r * 0.2)], None, color)
    pen.circle(cx, cy + r * 0.3, r * 0.55, color)


def tomoe(pen: Pen, cx: float, cy: float, r: float, angle: float, color: Color) -> None:
    """A comma-shaped tomoe centred on a ring of radius ``r`` at ``angle``."""
    x = cx + r * math.cos(angle)
    y = cy + r * math.sin(angle)
    dot = r * 0.38
    pen.circle(x, y, dot, color)
    tail = [(x + dot * math.cos(angle + math.pi / 2), y + dot * math.sin(angle + math.pi / 2)),
            (x + 2.2 * dot * math.cos(angle + 2.3), y + 2.2 * dot * math.sin(angle + 2.3)),
            (x, y)]
    pen.polygon(tail, color)


def flame(pen: Pen, cx: float, base: float, w: float, h: float, color: Color) -> None:
    """A single teardrop flame pointing up."""
    pen.polygon([(cx - w, base), (cx - w * 0.6, base - h * 0.5), (cx - w * 0.15, base - h * 0.7),
                 (cx, base - h), (cx + w * 0.35, base - h * 0.6), (cx + w * 0.8, base - h * 0.45),
                 (cx + w, base)], color)
    pen.ellipse((cx - w, base - w * 0.8, cx + w, base + w * 0.8), color)


def bolt(pen: Pen, points: Sequence[Point], color: Color, width: float) -> None:
    pen.line(points, color, width)


# --------------------------------------------------------------------------
# Character portraits
# --------------------------------------------------------------------------

HEAD_X, HEAD_Y, HEAD_R = 64.0, 68.0, 28.0
EYE_Y = 72.0
EYE_L, EYE_R = 53.0, 75.0

MARKS: dict[str, Callable[[Pen, Color], None]] = {
    "leaf": lambda pen, c: leaf_mark(pen, 64, 52, 4.2, c),
    "leaf_slashed": lambda pen, c: (leaf_mark(pen, 64, 52, 4.2, c),
                                    pen.line([(54, 57), (74, 47)], c, 1.5)),
    "sand": lambda pen, c: sand_mark(pen, 64, 52, 4.0, c),
    "note": lambda pen, c: note_mark(pen, 64, 52, 4.2, c),
    "oil": lambda pen, c: oil_mark(pen, 64, 52, 4.2, (200, 40, 40)),
}


@dataclass(frozen=True)
class Portrait:
    """Everything that makes one character's head look like them."""

    background: Color
    hair: Color
    hair_style: str
    clothes: Color
    eyes: Color
    eye_style: str = "round"
    plate: str | None = "leaf"
    band: Color = (35, 45, 95)
    skin: Color = SKIN
    extras: tuple[str, ...] = ()


# Hair styles: each entry draws the parts behind the head and in front of it.

def _spikes(pen: Pen, color: Color, cx: float, cy: float, r: float,
            angles: Sequence[float], length: float, half_width: float) -> None:
    for deg in angles:
        a = math.radians(deg)
        tip = (cx + (r + length) * math.cos(a), cy + (r + length) * math.sin(a))
        left = (cx + r * math.cos(a - half_width), cy + r * math.sin(a - half_width))
        right = (cx + r * math.cos(a + half_width), cy + r * math.sin(a + half_width))
        pen.polygon([left, tip, right], color)


def _cap(pen: Pen, color: Color, low: float = 60) -> None:
    """Hair covering the skull from the crown down to the line ``y = low``."""
    r = HEAD_R + 2
    pts = []
    for i in range(73):
        a = math.radians(i * 5)
        x, y = HEAD_X + r * math.cos(a), HEAD_Y - 2 + r * math.sin(a)
        pts.append((x, min(y, low)))
    pen.polygon(pts, color)


def hair_spiky_back(pen: Pen, c: Color) -> None:
    _spikes(pen, c, HEAD_X, HEAD_Y - 6, 26, range(180, 361, 22), 16, 0.28)


def hair_spiky_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 50)
    for x in (44, 54, 64, 74, 84):
        pen.polygon([(x - 6, 50), (x + 6, 50), (x, 60)], c)


def hair_long_spiky_front(pen: Pen, c: Color) -> None:
    hair_spiky_front(pen, c)
    pen.polygon([(36, 52), (44, 52), (40, 84)], c)
    pen.polygon([(84, 52), (92, 52), (88, 84)], c)


def hair_duck_back(pen: Pen, c: Color) -> None:
    _spikes(pen, c, HEAD_X + 6, HEAD_Y - 8, 24, (200, 230, 255, 285, 310, 335), 18, 0.3)


def hair_duck_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 48)
    pen.polygon([(36, 48), (46, 48), (38, 82)], c)
    pen.polygon([(82, 48), (92, 48), (90, 82)], c)
    pen.polygon([(58, 48), (70, 48), (62, 66)], c)


def hair_slanted_back(pen: Pen, c: Color) -> None:
    _spikes(pen, c, HEAD_X - 4, HEAD_Y - 10, 24, (190, 210, 232, 254, 276), 22, 0.3)


def hair_slanted_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 46)
    pen.polygon([(38, 48), (50, 48), (40, 64)], c)


def hair_long_back(pen: Pen, c: Color) -> None:
    pen.rect((HEAD_X - HEAD_R - 4, HEAD_Y - 10, HEAD_X + HEAD_R + 4, 112), c)


def hair_long_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 48)
    pen.polygon([(36, 48), (48, 48), (40, 94)], c)
    pen.polygon([(80, 48), (92, 48), (88, 94)], c)
    pen.polygon([(48, 48), (62, 48), (52, 60)], c)


def hair_hime_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 62)
    pen.rect((36, 48, 44, 96), c)
    pen.rect((84, 48, 92, 96), c)


def hair_pineapple_back(pen: Pen, c: Color) -> None:
    pen.rect((58, 22, 70, 36), c)
    _spikes(pen, c, 64, 22, 4, (200, 230, 270, 310, 340), 12, 0.6)


def hair_pineapple_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 50)
    pen.rect((36, 48, 40, 70), c)
    pen.rect((88, 48, 92, 70), c)


def hair_bowl_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 60)
    pen.rect((HEAD_X - HEAD_R - 1, 52, HEAD_X - HEAD_R + 4, 78), c)
    pen.rect((HEAD_X + HEAD_R - 4, 52, HEAD_X + HEAD_R + 1, 78), c)
    pen.arc((44, 40, 72, 54), 200, 300, (120, 130, 150), 1.4)  # shine


def hair_short_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 48)
    _spikes(pen, c, HEAD_X, HEAD_Y - 6, 26, range(190, 351, 20), 7, 0.25)
    for x in (46, 58, 72, 82):
        pen.polygon([(x - 5, 48), (x + 5, 48), (x + 1, 56)], c)


def hair_tied_back(pen: Pen, c: Color) -> None:
    pen.polygon([(80, 76), (96, 76), (100, 104), (88, 108)], c)


def hair_tied_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 46)
    pen.polygon([(36, 46), (46, 46), (42, 88)], c)
    pen.polygon([(82, 46), (92, 46), (86, 88)], c)


def hair_mane_back(pen: Pen, c: Color) -> None:
    _spikes(pen, c, HEAD_X, HEAD_Y, 28, range(100, 441, 24), 20, 0.22)
    pen.rect((34, 70, 94, 118), c)


def hair_mane_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 46)
    pen.polygon([(34, 46), (44, 46), (36, 96)], c)
    pen.polygon([(84, 46), (94, 46), (92, 96)], c)


def hair_twin_tails_back(pen: Pen, c: Color) -> None:
    pen.ellipse((20, 74, 38, 118), c)
    pen.ellipse((90, 74, 108, 118), c)


def hair_twin_tails_front(pen: Pen, c: Color) -> None:
    _cap(pen, c, 46)
    pen.polygon([(36, 46), (48, 46), (40, 80)], c)
    pen.polygon([(80, 46), (92, 46), (88, 80)], c)
    pen.polygon([(50, 46), (62, 46), (54, 58)], c)


HAIR_STYLES: dict[str, tuple[Callable[[Pen, Color], None] | None,
                             Callable[[Pen, Color], None]]] = {
    "spiky": (hair_spiky_back, hair_spiky_front),
    "long_spiky": (hair_spiky_back, hair_long_spiky_front),
    "duck": (hair_duck_back, hair_duck_front),
    "slanted": (hair_slanted_back, hair_slanted_front),
    "long": (hair_long_back, hair_long_front),
    "hime": (hair_long_back, hair_hime_front),
    "pineapple": (hair_pineapple_back, hair_pineapple_front),
    "bowl": (None, hair_bowl_front),
    "short": (None, hair_short_front),
    "tied": (hair_tied_back, hair_tied_front),
    "mane": (hair_mane_back, hair_mane_front),
    "twin_tails": (hair_twin_tails_back, hair_twin_tails_front),
    "straight_long": (hair_long_back, hair_tied_front),
}


def draw_eye(pen: Pen, x: float, color: Color, style: str) -> None:
    if style == "narrow":
        pen.polygon([(x - 7, EYE_Y), (x, EYE_Y - 3), (x + 7, EYE_Y), (x, EYE_Y + 2.5)], WHITE)
        pen.circle(x, EYE_Y, 2.4, color)
        pen.line([(x - 7, EYE_Y), (x, EYE_Y - 3), (x + 7, EYE_Y)], BLACK, 1.2)
        return
    pen.ellipse((x - 6, EYE_Y - 5, x + 6, EYE_Y + 5), WHITE, BLACK, 1)
    if style == "pale":
        pen.circle(x, EYE_Y, 3.6, (222, 214, 236))
    elif style == "sharingan":
        pen.circle(x, EYE_Y, 4.2, RED)
        pen.circle(x, EYE_Y, 1.3, BLACK)
        for k in range(3):
            pen.circle(x + 2.8 * math.cos(k * 2.094), EYE_Y + 2.8 * math.sin(k * 2.094), 0.8, BLACK)
    elif style == "slit":
        pen.circle(x, EYE_Y, 4.2, color)
        pen.ellipse((x - 0.9, EYE_Y - 3.8, x + 0.9, EYE_Y + 3.8), BLACK)
    else:
        pen.circle(x, EYE_Y, 3.8, color)
        pen.circle(x, EYE_Y, 1.6, BLACK)
        pen.circle(x + 1.2, EYE_Y - 1.4, 0.8, WHITE)


def draw_extra(pen: Pen, name: str, p: Portrait) -> None:
    if name == "whiskers":
        for dy in (-2, 2, 6):
            pen.line([(38, 80 + dy), (47, 81 + dy * 0.6)], BLACK, 0.9)
            pen.line([(90, 80 + dy), (81, 81 + dy * 0.6)], BLACK, 0.9)
    elif name == "mask":
        pen.polygon([(37, 78), (91, 78), (86, 92), (64, 97), (42, 92)], (40, 50, 80))
    elif name == "eye_cover":
        pen.polygon([(40, 56), (66, 58), (66, 80), (40, 78)], p.band)
        pen.line([(53, 62), (53, 82)], (150, 60, 60), 1)
    elif name == "brows":
        pen.rect((45, 62, 61, 66), BLACK)
        pen.rect((67, 62, 83, 66), BLACK)
    elif name == "ai":
        pen.line([(71, 52), (79, 50)], RED, 1.2)
        pen.line([(75, 47), (75, 58)], RED, 1.2)
        pen.arc((70, 53, 80, 60), 0, 180, RED, 1.2)
    elif name == "rings":
        pen.circle(EYE_L, EYE_Y, 7.5, None, BLACK, 1.6)
        pen.circle(EYE_R, EYE_Y, 7.5, None, BLACK, 1.6)
    elif name == "lines":
        pen.line([(47, 77), (49, 83)], (120, 90, 80), 1)
        pen.line([(81, 77), (79, 83)], (120, 90, 80), 1)
    elif name == "red_lines":
        pen.line([(52, 78), (50, 90)], RED, 1.6)
        pen.line([(76, 78), (78, 90)], RED, 1.6)
    elif name == "diamond":
        pen.polygon([(64, 54), (67, 58), (64, 62), (61, 58)], (150, 70, 190))
    elif name == "purple_lids":
        pen.arc((45, 63, 61, 76), 190, 350, (130, 60, 160), 2.2)
        pen.arc((67, 63, 83, 76), 190, 350, (130, 60, 160), 2.2)
    elif name == "cloud":
        for cx in (30, 98):
            pen.ellipse((cx - 10, 108, cx + 10, 122), RED, WHITE, 1)
    elif name == "flame_trim":
        for x in range(18, 112, 12):
            pen.polygon([(x, 128), (x + 6, 114), (x + 12, 128)], RED)
    elif name == "collar":
        pen.polygon([(34, 98), (50, 92), (64, 104), (78, 92), (94, 98), (94, 112), (34, 112)], p.clothes)
    elif name == "vest":
        pen.rect((48, 100, 56, 128), (70, 110, 60))
        pen.rect((72, 100, 80, 128), (70, 110, 60))
    elif name == "gourd":
        pen.circle(100, 104, 12, (160, 110, 70), BLACK, 1)
        pen.circle(100, 84, 8, (160, 110, 70), BLACK, 1)
    elif name == "smile":
        pen.arc((56, 82, 72, 92), 20, 160, BLACK, 1.2)
    elif name == "mouth":
        pen.line([(59, 88), (69, 88)], BLACK, 1)


def draw_portrait(p: Portrait) -> Image.Image:
    pen = Pen(p.background)
    back, front = HAIR_STYLES[p.hair_style]
    if back:
        back(pen, p.hair)
    # shoulders and neck
    pen.ellipse((16, 100, 112, 170), p.clothes)
    pen.rect((56, 88, 72, 104), p.skin)
    # head and ears
    pen.circle(HEAD_X - HEAD_R + 1, EYE_Y + 2, 5, p.skin)
    pen.circle(HEAD_X + HEAD_R - 1, EYE_Y + 2, 5, p.skin)
    pen.circle(HEAD_X, HEAD_Y, HEAD_R, p.skin)
    front(pen, p.hair)
    if p.plate:
        pen.rect((HEAD_X - HEAD_R + 1, 46, HEAD_X + HEAD_R - 1, 58), p.band)
        pen.rect((52, 45, 76, 59), METAL, METAL_DARK, 1)
        MARKS[p.plate](pen, METAL_DARK)
    draw_eye(pen, EYE_L, p.eyes, p.eye_style)
    draw_eye(pen, EYE_R, p.eyes, p.eye_style)
    if "mouth" not in p.extras and "mask" not in p.extras and "smile" not in p.extras:
        draw_extra(pen, "mouth", p)
    for extra in p.extras:
        draw_extra(pen, extra, p)
    return pen.finish()


PORTRAITS: dict[str, Portrait] = {
    "Naruto Uzumaki": Portrait((255, 226, 150), (250, 200, 40), "spiky", (240, 120, 20),
                               (40, 110, 220), extras=("whiskers", "smile")),
    "Sasuke Uchiha": Portrait((170, 190, 225), (30, 34, 60), "duck", (40, 50, 110),
                              BLACK, eye_style="narrow", extras=("collar",)),
    "Sakura Haruno": Portrait((250, 215, 225), (245, 150, 180), "long", (210, 40, 60),
                              (60, 170, 90), band=(200, 40, 60), extras=("smile",)),
    "Kakashi Hatake": Portrait((200, 215, 200), (215, 218, 224), "slanted", (60, 70, 90),
                               (40, 40, 40), eye_style="narrow",
                               extras=("mask", "eye_cover", "vest")),
    "Hinata Hyuga": Portrait((225, 215, 245), (45, 40, 95), "hime", (190, 175, 220),
                             WHITE, eye_style="pale", plate=None, skin=PALE_SKIN,
                             extras=("smile",)),
    "Shikamaru Nara": Portrait((200, 225, 190), (40, 40, 45), "pineapple", (90, 100, 110),
                               (60, 50, 40), eye_style="narrow", extras=("vest",)),
    "Rock Lee": Portrait((215, 245, 200), (15, 15, 20), "bowl", (40, 150, 60),
                         BLACK, plate=None, extras=("brows", "smile")),
    "Gaara": Portrait((240, 215, 160), (190, 40, 30), "short", (130, 50, 50),
                      (120, 200, 190), plate=None, skin=PALE_SKIN,
                      extras=("ai", "rings", "gourd")),
    "Itachi Uchiha": Portrait((60, 60, 75), (20, 20, 28), "tied", BLACK,
                              RED, eye_style="sharingan", plate="leaf_slashed",
                              extras=("lines", "cloud")),
    "Jiraiya": Portrait((210, 230, 210), (240, 240, 240), "mane", (170, 40, 40),
                        (50, 40, 30), eye_style="narrow", plate="oil",
                        band=(90, 80, 70), extras=("red_lines", "smile")),
    "Tsunade": Portrait((230, 235, 215), (245, 210, 90), "twin_tails", (100, 130, 100),
                        (160, 120, 60), plate=None, extras=("diamond", "smile")),
    "Orochimaru": Portrait((190, 200, 170), (15, 15, 20), "straight_long", (200, 190, 160),
                           (220, 190, 40), eye_style="slit", plate="note",
                           skin=(236, 236, 226), extras=("purple_lids",)),
    "Minato Namikaze": Portrait((245, 240, 200), (245, 215, 60), "long_spiky", (245, 245, 240),
                                (30, 90, 200), extras=("flame_trim", "smile")),
}


# --------------------------------------------------------------------------
# Jutsu icons and other pictures
# --------------------------------------------------------------------------

def draw_rasengan() -> Image.Image:
    pen = Pen((20, 30, 70))
    pen.circle(64, 64, 44, (60, 120, 220))
    pen.circle(64, 64, 34, (110, 180, 250))
    for k in range(4):
        pen.line(spiral(64, 64, 42, turns=1.1, phase=k * math.pi / 2), (230, 245, 255), 2.2)
    pen.circle(64, 64, 10, WHITE)
    pen.circle(64, 64, 44, None, (180, 220, 255), 1.5)
    return pen.finish()


def draw_chidori() -> Image.Image:
    pen = Pen((25, 25, 50))
    pen.circle(64, 70, 20, (120, 170, 255))
    pen.circle(64, 70, 12, (230, 240, 255))
    bolts = [
        [(64, 70), (40, 56), (46, 48), (14, 30)],
        [(64, 70), (90, 52), (84, 44), (116, 20)],
        [(64, 70), (30, 84), (36, 92), (8, 104)],
        [(64, 70), (100, 88), (94, 98), (122, 112)],
        [(64, 70), (58, 40), (68, 34), (60, 8)],
    ]
    for b in bolts:
        bolt(pen, b, (160, 200, 255), 4)
        bolt(pen, b, WHITE, 1.6)
    return pen.finish()


def draw_shadow_clone() -> Image.Image:
    pen = Pen((250, 236, 200))
    for i, x in enumerate((34, 64, 94)):
        shade = 1.0 - 0.18 * abs(i - 1)
        body = tuple(int(c * shade) for c in (240, 120, 20))
        hair = tuple(int(c * shade) for c in (250, 200, 40))
        pen.ellipse((x - 20, 86, x + 20, 140), body)
        _spikes(pen, hair, x, 56, 14, range(180, 361, 30), 8, 0.35)
        pen.circle(x, 62, 15, SKIN)
        pen.ellipse((x - 15, 44, x + 15, 60), hair)
        pen.circle(x - 5, 64, 2, BLACK)
        pen.circle(x + 5, 64, 2, BLACK)
    for x, y in ((18, 24), (108, 20), (62, 18)):
        pen.circle(x, y, 8, (225, 225, 225))
        pen.circle(x + 7, y + 3, 6, (225, 225, 225))
    return pen.finish()


def draw_fireball() -> Image.Image:
    pen = Pen((60, 20, 20))
    pen.circle(72, 64, 42, (230, 70, 20))
    pen.circle(72, 64, 30, (250, 150, 30))
    pen.circle(72, 64, 16, (255, 230, 120))
    for x, h in ((26, 30), (40, 44), (56, 36), (88, 40), (104, 30)):
        flame(pen, x, 110, 8, h, (240, 110, 20))
    pen.polygon([(4, 56), (34, 60), (34, 68), (4, 72)], (250, 150, 30))
    return pen.finish()


def draw_sand_coffin() -> Image.Image:
    pen = Pen((245, 225, 175))
    pen.ellipse((10, 96, 118, 128), (210, 170, 100))
    pen.polygon([(44, 112), (40, 60), (50, 30), (78, 30), (88, 60), (84, 112)], (200, 155, 85))
    pen.circle(64, 34, 12, (190, 145, 75))
    for y in range(44, 112, 10):
        pen.arc((38, y - 6, 90, y + 6), 10, 170, (160, 115, 55), 1.2)
    rng = random.Random(7)  # fixed seed: the same grains every run
    for _ in range(90):
        a = rng.uniform(0, 2 * math.pi)
        r = rng.uniform(38, 58)
        pen.circle(64 + r * math.cos(a), 70 + r * 0.8 * math.sin(a), rng.uniform(0.8, 1.8),
                   (180, 135, 70))
    return pen.finish()


def draw_eye_icon(background: Color, iris: Color, pupil: bool, tomoe_count: int,
                  veins: bool) -> Image.Image:
    pen = Pen(background)
    pen.polygon([(10, 64), (40, 36), (88, 36), (118, 64), (88, 92), (40, 92)], WHITE)
    pen.circle(64, 64, 26, iris)
    if pupil:
        pen.circle(64, 64, 7, BLACK)
        pen.circle(64, 64, 16, None, BLACK, 1.2)
    for k in range(tomoe_count):
        tomoe(pen, 64, 64, 16, k * 2 * math.pi / tomoe_count - math.pi / 2, BLACK)
    if veins:
        for side in (-1, 1):
            for dy in (-10, 0, 10):
                x0 = 64 + side * 54
                pen.line([(x0, 64 + dy), (x0 + side * 6, 60 + dy * 1.6),
                          (x0 + side * 4, 56 + dy * 2.2)], (170, 160, 200), 1.6)
    pen.line([(10, 64), (40, 34), (88, 34), (118, 64)], BLACK, 2.5)
    pen.line([(10, 64), (40, 94), (88, 94), (118, 64)], BLACK, 1.5)
    return pen.finish()


def draw_konoha_symbol() -> Image.Image:
    pen = Pen((60, 130, 70))
    pen.circle(64, 64, 50, (110, 180, 100))
    leaf_mark(pen, 64, 66, 30, (20, 60, 25), width=5)
    return pen.finish()


def draw_suna_symbol() -> Image.Image:
    pen = Pen((200, 160, 90))
    pen.circle(64, 64, 50, (240, 210, 150))
    sand_mark(pen, 64, 64, 26, (110, 70, 30), width=5)
    return pen.finish()


def draw_toad() -> Image.Image:
    pen = Pen((170, 210, 240))
    pen.ellipse((8, 50, 120, 124), (200, 70, 40))
    pen.circle(36, 50, 18, (200, 70, 40))
    pen.circle(92, 50, 18, (200, 70, 40))
    for x in (36, 92):
        pen.circle(x, 48, 11, (250, 220, 90))
        pen.rect((x - 9, 46, x + 9, 50), BLACK)
    pen.arc((26, 70, 102, 106), 10, 170, BLACK, 2.5)
    pen.line([(48, 64), (62, 100)], (120, 30, 30), 2.5)  # scar
    for x, y in ((24, 90), (104, 88), (70, 116)):
        pen.circle(x, y, 4, (150, 50, 30))
    pen.line([(64, 92), (112, 78)], (240, 240, 220), 3)  # pipe
    pen.rect((108, 70, 118, 80), (110, 80, 50))
    return pen.finish()


def draw_kunai() -> Image.Image:
    pen = Pen((250, 245, 225))
    blade = (150, 158, 172)
    pen.polygon([(64, 8), (74, 40), (64, 50), (54, 40)], blade, METAL_DARK)
    pen.polygon([(54, 40), (30, 22), (42, 44), (64, 50)], blade, METAL_DARK)
    pen.polygon([(74, 40), (98, 22), (86, 44), (64, 50)], blade, METAL_DARK)
    pen.rect((60, 50, 68, 96), (240, 225, 180))
    for y in range(52, 96, 6):
        pen.line([(60, y), (68, y + 4)], (120, 90, 60), 1.2)
    pen.circle(64, 104, 8, None, METAL_DARK, 3)
    pen.line([(78, 64), (94, 64)], BLACK, 1.5)  # seal formula lines
    pen.line([(78, 70), (100, 70)], BLACK, 1.5)
    pen.line([(78, 76), (90, 76)], BLACK, 1.5)
    return pen.finish()


OTHER_PICTURES: dict[str, Callable[[], Image.Image]] = {
    "Rasengan": draw_rasengan,
    "Chidori": draw_chidori,
    "Shadow Clone Technique": draw_shadow_clone,
    "Fireball Technique": draw_fireball,
    "Sand Coffin": draw_sand_coffin,
    "Byakugan": lambda: draw_eye_icon((235, 230, 250), (222, 214, 236), False, 0, True),
    "Sharingan": lambda: draw_eye_icon((40, 10, 15), RED, True, 3, False),
    "Konohagakure Symbol": draw_konoha_symbol,
    "Sunagakure Symbol": draw_suna_symbol,
    "Gamabunta": draw_toad,
    "Three-Pronged Kunai": draw_kunai,
}


def all_pictures() -> dict[str, Callable[[], Image.Image]]:
    """Map each file name (without ``.png``) to a function that draws it."""
    pictures: dict[str, Callable[[], Image.Image]] = {
        name: (lambda p=portrait: draw_portrait(p)) for name, portrait in PORTRAITS.items()
    }
    pictures.update(OTHER_PICTURES)
    return pictures


# --------------------------------------------------------------------------
# Fan art in the Reddit sample posts (snapshot/reddit/media)
# --------------------------------------------------------------------------

PAPER: Color = (246, 240, 226)
INK: Color = (46, 42, 56)


def draw_leaf_gate_at_dusk() -> Image.Image:
    """Post 1hna03, "I painted the Hidden Leaf gate at dusk"."""
    pen = Pen((236, 120, 70))
    pen.rect((0, 0, 128, 26), (96, 64, 120))  # the sky darkening overhead
    pen.rect((0, 26, 128, 48), (196, 96, 100))
    pen.circle(100, 66, 16, (255, 214, 120))  # the setting sun behind the gate
    pen.ellipse((-40, 80, 70, 140), (64, 96, 60))
    pen.ellipse((50, 84, 170, 140), (52, 82, 52))
    pen.polygon([(52, 128), (60, 100), (68, 100), (76, 128)], (196, 160, 110))  # the road in
    gate, shadow = (46, 86, 52), (28, 52, 34)
    pen.rect((22, 40, 32, 104), gate, shadow, 1)  # pillars
    pen.rect((96, 40, 106, 104), gate, shadow, 1)
    pen.rect((34, 58, 62, 102), (58, 104, 62), shadow, 1)  # the two doors, open a little
    pen.rect((66, 58, 94, 102), (58, 104, 62), shadow, 1)
    pen.rect((18, 44, 110, 56), (150, 40, 36), (90, 24, 24), 1)  # the lintel and its sign
    pen.polygon([(10, 42), (64, 26), (118, 42), (110, 46), (18, 46)], (34, 30, 38))  # roof
    leaf_mark(pen, 64, 50, 4.2, (250, 230, 190), width=1.2)
    for x, y in ((18, 18), (40, 10), (112, 14)):  # first stars
        pen.circle(x, y, 0.9, (255, 240, 210))
    return pen.finish()


def draw_sketchbook_page(portrait: Portrait) -> Image.Image:
    """Post 1hna04's gallery: a pencil study of a character on a ring-bound sketchbook page."""
    study = ImageOps.grayscale(draw_portrait(replace(portrait, background=WHITE)))
    lines = ImageOps.invert(study.filter(ImageFilter.FIND_EDGES))  # pencil outlines
    shading = ImageOps.autocontrast(study).point(lambda v: 110 + v * 145 // 255)  # light hatching tone
    image = ImageOps.colorize(ImageChops.multiply(lines, shading), black=INK, white=PAPER)
    sketch = ImageDraw.Draw(image)
    sketch.rectangle((0, 0, SIZE - 1, SIZE - 1), outline=(200, 192, 176))
    for y in range(8, SIZE, 14):  # the binding
        sketch.ellipse((2, y, 8, y + 6), fill=(120, 116, 124))
    return image


REDDIT_PICTURES: dict[str, Callable[[], Image.Image]] = {
    "leafgate01": draw_leaf_gate_at_dusk,
    "sannin01": lambda: draw_sketchbook_page(PORTRAITS["Jiraiya"]),
    "sannin02": lambda: draw_sketchbook_page(PORTRAITS["Tsunade"]),
}


def main(out_dir: Path = IMAGES_DIR, reddit_dir: Path = REDDIT_MEDIA_DIR) -> list[Path]:
    """Draw every picture (Fandom's into ``out_dir``, Reddit's into ``reddit_dir``); return the paths."""
    written = []
    for folder, pictures in ((out_dir, all_pictures()), (reddit_dir, REDDIT_PICTURES)):
        folder.mkdir(parents=True, exist_ok=True)
        for name, draw in sorted(pictures.items()):
            path = folder / f"{name}.png"
            draw().save(path, format="PNG", optimize=True)
            written.append(path)
    print(f"wrote {len(written)} images to {out_dir} and {reddit_dir}")
    return written


if __name__ == "__main__":
    main()
