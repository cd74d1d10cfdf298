"""Procedural SYNTHETIC football-player crops written in the SoccerNet-ReID folder layout.

The images are drawn, not photographed: each game gets two team kits, two goalkeeper kits and a
referee kit; each person a shirt number, skin tone, hair colour/style, build, boots and sleeves;
each view a pose, facing, pitch background with mowing stripes and lines, scale/crop jitter,
lighting, blur, resolution loss and sometimes an overlapping player. Team-mates share a kit, so
identity is carried by number + skin/hair + build + boots, as in real matches. Every split folder
holds SYNTHETIC.txt saying so; nothing here is real data.

    reid-synthetic --out data/synthetic_reid --games 8 --actions-per-game 6 --players-per-action 10 \
        --views 4 --height 256 --width 128 --seed 0

Layout (as the official data set): train/{league}/{season}/{game}/{action}/*.png,
{valid,test}/{query,gallery}/{league}/{season}/{game}/{action}/*.png, optional
challenge/{query,gallery}/<bbox_idx>-<action_idx>-<H>x<W>.png. Query = action-frame crops of persons
also seen in a replay; gallery = replay crops + action-frame crops of persons seen nowhere else.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from training.data.readers import SoccerNetName

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]
Point = tuple[float, float]
SYNTHETIC_NOTE = (
    "SYNTHETIC DATA. Every image below this folder was drawn procedurally by training/data/synthetic.py\n"
    "(seeded, numpy + Pillow). None shows a real person or match; the folder layout and file names\n"
    "only imitate SoccerNet-ReID so the same readers work on it.\n"
)
SUPERSAMPLE = 2

KIT_COLOURS: dict[str, RGB] = {
    "white": (236, 236, 232), "black": (28, 28, 32), "red": (200, 24, 32), "claret": (115, 20, 45),
    "blue": (28, 64, 176), "navy": (22, 30, 78), "sky": (112, 172, 226), "yellow": (244, 208, 36),
    "orange": (238, 118, 24), "green": (22, 112, 56), "purple": (96, 40, 140), "pink": (232, 112, 162),
    "grey": (132, 134, 140), "gold": (196, 158, 64), "teal": (24, 136, 140), "maroon": (90, 30, 30),
}
REFEREE_COLOURS: tuple[RGB, ...] = (
    (20, 20, 22), (242, 222, 40), (236, 96, 150), (150, 214, 60), (214, 40, 40),
)
SKIN_TONES: tuple[RGB, ...] = (
    (246, 214, 190), (234, 192, 160), (214, 166, 128), (190, 136, 98),
    (160, 108, 74), (122, 80, 52), (88, 58, 40),
)
HAIR_COLOURS: tuple[RGB, ...] = (
    (20, 16, 14), (54, 36, 24), (96, 64, 36), (196, 160, 96), (232, 206, 140), (150, 70, 30), (150, 150, 150),
)
HAIR_STYLES = ("bald", "buzz", "short", "long", "afro", "bun")
BOOT_COLOURS: tuple[RGB, ...] = (
    (20, 20, 20), (240, 240, 240), (230, 40, 40), (250, 130, 20),
    (210, 250, 40), (40, 90, 230), (240, 90, 180),
)
PATTERNS = ("plain", "plain", "stripes", "hoops", "halves", "sash", "sleeves")
LEAGUES = ("synthetic_league_a", "synthetic_league_b", "synthetic_league_c")
TEAM_NAMES = (
    "Northfield", "Riverside", "Eastport", "Westvale", "Hillcrest", "Lakeside", "Stonebridge", "Oakham",
    "Redcliff", "Bluewater", "Greenhill", "Ashford", "Kingsmoor", "Fairhaven", "Brookdale", "Millbrook",
)
# 7-segment strokes per digit in a 1 x 2 box: (x0, y0, x1, y1).
_SEGMENTS = {
    "a": (0, 0, 1, 0), "b": (1, 0, 1, 1), "c": (1, 1, 1, 2), "d": (0, 2, 1, 2),
    "e": (0, 1, 0, 2), "f": (0, 0, 0, 1), "g": (0, 1, 1, 1),
}
_DIGITS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. ``views`` counts frames per action: 1 action frame + (views - 1) replays."""

    train_games: int = 4
    valid_games: int = 1
    test_games: int = 1
    challenge_games: int = 0
    actions_per_game: int = 4
    players_per_action: int = 8
    views: int = 3
    height: int = 256
    width: int = 128
    seed: int = 0
    distractor_fraction: float = 0.15
    replay_visibility: float = 0.75
    occlusion_p: float = 0.25
    low_res_p: float = 0.4
    variable_size: bool = False
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        counts = ("train_games", "valid_games", "test_games", "challenge_games")
        if any(getattr(self, name) < 0 for name in counts):
            raise ValueError(f"game counts must be >= 0: {[getattr(self, n) for n in counts]}")
        if self.actions_per_game < 1 or self.views < 1:
            raise ValueError("actions_per_game and views must be >= 1")
        if not 1 <= self.players_per_action <= ROSTER_SIZE:
            raise ValueError(f"players_per_action must be in [1, {ROSTER_SIZE}] (one game's roster)")
        if self.height < 16 or self.width < 8:
            raise ValueError(f"crops must be at least 16x8 (HxW), got {self.height}x{self.width}")
        for name in ("distractor_fraction", "replay_visibility", "occlusion_p", "low_res_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")


@dataclass(frozen=True)
class Kit:
    shirt: RGB
    secondary: RGB
    shorts: RGB
    socks: RGB
    number: RGB
    pattern: str


@dataclass(frozen=True)
class Person:
    """Everything that stays fixed for one person across views."""

    clazz: str
    kit: Kit
    label: str  # shirt number, or a letter for referees
    show_number: bool
    skin: RGB
    hair: RGB
    hair_style: str
    shoulder: float  # half shoulder width, fraction of body height
    hip: float
    leg: float  # hip-to-floor fraction of body height
    head: float
    limb: float  # limb thickness multiplier
    long_sleeves: bool
    boots: RGB
    gloves: RGB | None = None
    flag: bool = False


@dataclass(frozen=True)
class Pose:
    facing: str  # front, back, left, right
    phase: float
    stride: float
    arm_swing: float
    arm_spread: float
    lean: float


@dataclass
class _Game:
    league: str
    season: str
    name: str
    roster: list[Person] = field(default_factory=list)


ROSTER_SIZE = 2 * 11 + 3


def _jitter(rng: np.random.Generator, colour: RGB, amount: float) -> RGB:
    values = np.clip(np.asarray(colour, dtype=np.float64) + rng.normal(0.0, amount, 3), 0, 255)
    return (int(values[0]), int(values[1]), int(values[2]))


def _far_from(rng: np.random.Generator, palette: list[RGB], taken: list[RGB], min_dist: float = 110.0) -> RGB:
    order = rng.permutation(len(palette))
    for i in order:
        if all(math.dist(palette[i], t) >= min_dist for t in taken):
            return palette[i]
    return palette[order[0]]


def _make_kit(rng: np.random.Generator, taken: list[RGB], pattern: str | None = None) -> Kit:
    palette = list(KIT_COLOURS.values())
    shirt = _far_from(rng, palette, taken)
    secondary = _far_from(rng, palette, [shirt], 150.0)
    shorts_options = (shirt, secondary, palette[rng.integers(len(palette))])
    shorts = shorts_options[int(rng.choice(3, p=[0.4, 0.36, 0.24]))]
    socks = shirt if rng.random() < 0.5 else shorts
    # A number must stay readable on its shirt.
    plain_number = (240, 240, 240) if sum(shirt) < 380 else (20, 20, 20)
    number = secondary if math.dist(secondary, shirt) > 150 else plain_number
    return Kit(shirt, secondary, shorts, socks, number, pattern or str(rng.choice(PATTERNS)))


def _make_person(rng: np.random.Generator, clazz: str, kit: Kit, label: str, show_number: bool) -> Person:
    is_gk = clazz.startswith("Goalkeeper")
    return Person(
        clazz=clazz,
        kit=kit,
        label=label,
        show_number=show_number,
        skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 6.0),
        hair=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 5.0),
        hair_style=str(rng.choice(HAIR_STYLES, p=[0.1, 0.2, 0.3, 0.15, 0.15, 0.1])),
        shoulder=float(rng.uniform(0.095, 0.135)),
        hip=float(rng.uniform(0.065, 0.085)),
        leg=float(rng.uniform(0.49, 0.55)),
        head=float(rng.uniform(0.9, 1.12)),
        limb=float(rng.uniform(0.85, 1.2)),
        long_sleeves=bool(is_gk or rng.random() < 0.25),
        boots=BOOT_COLOURS[rng.integers(len(BOOT_COLOURS))],
        gloves=_far_from(rng, list(KIT_COLOURS.values()), [kit.shirt], 80.0) if is_gk else None,
        flag=clazz == "Side_referee",
    )


def _make_game(rng: np.random.Generator, index: int, split: str) -> _Game:
    home, away = rng.choice(len(TEAM_NAMES), size=2, replace=False)
    year = 2030 + int(rng.integers(0, 5))
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    name = (f"{year}-{month:02d}-{day:02d} - 20-00 {TEAM_NAMES[home]} {rng.integers(0, 4)} - "
            f"{rng.integers(0, 4)} {TEAM_NAMES[away]} ({split} {index})")
    game = _Game(str(rng.choice(LEAGUES)), f"{year}-{year + 1}", name)
    left = _make_kit(rng, [(34, 120, 40)])  # keep kits away from pitch green
    right = _make_kit(rng, [(34, 120, 40), left.shirt])
    shirts = [left.shirt, right.shirt]
    for side, kit in (("left", left), ("right", right)):
        numbers = rng.choice(np.arange(2, 100), size=10, replace=False)
        for number in numbers:
            game.roster.append(_make_person(rng, f"Player_team_{side}", kit, str(number), True))
        gk_kit = _make_kit(rng, [*shirts, (34, 120, 40)], pattern="plain")
        shirts.append(gk_kit.shirt)
        gk_number = "1" if rng.random() < 0.7 else str(rng.integers(12, 40))
        game.roster.append(_make_person(rng, f"Goalkeeper_team_{side}", gk_kit, gk_number, True))
    ref_colour = _far_from(rng, list(REFEREE_COLOURS), shirts, 90.0)
    ref_kit = Kit(ref_colour, (20, 20, 22), (20, 20, 22), (20, 20, 22), (20, 20, 22), "plain")
    game.roster.append(_make_person(rng, "Main_referee", ref_kit, "A", False))
    for letter in "BC":
        game.roster.append(_make_person(rng, "Side_referee", ref_kit, letter, False))
    return game


def _random_pose(rng: np.random.Generator) -> Pose:
    return Pose(
        facing=str(rng.choice(("front", "back", "left", "right"), p=[0.3, 0.3, 0.2, 0.2])),
        phase=float(rng.uniform(0, 2 * math.pi)),
        stride=float(rng.uniform(0.0, 0.65)),
        arm_swing=float(rng.uniform(0.1, 0.8)),
        arm_spread=float(rng.uniform(0.05, 0.35)),
        lean=float(rng.uniform(-0.03, 0.15)),
    )


# ----------------------------------------------------------------------------------------------- drawing


def _shade(colour: RGB, factor: float) -> RGB:
    return (int(colour[0] * factor), int(colour[1] * factor), int(colour[2] * factor))


class _Painter:
    """Draws one person in body coordinates (x right, y down, unit = body height, y=0 top of head)."""

    def __init__(self, canvas: Image.Image, cx: float, top: float, height: float, mirror: bool) -> None:
        self.canvas = canvas
        self.draw = ImageDraw.Draw(canvas)
        self.cx, self.top, self.h = cx, top, height
        self.sign = -1.0 if mirror else 1.0

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return (self.cx + self.sign * x * self.h, self.top + y * self.h)

    def limb(self, a: tuple[float, float], b: tuple[float, float], width: float, colour: RGB) -> None:
        pa, pb = self.pt(*a), self.pt(*b)
        w = max(1.0, width * self.h)
        self.draw.line([pa, pb], fill=colour, width=round(w))
        for p in (pa, pb):
            self.draw.ellipse([p[0] - w / 2, p[1] - w / 2, p[0] + w / 2, p[1] + w / 2], fill=colour)

    def ellipse(self, centre: tuple[float, float], rx: float, ry: float, colour: RGB) -> None:
        x, y = self.pt(*centre)
        self.draw.ellipse([x - rx * self.h, y - ry * self.h, x + rx * self.h, y + ry * self.h], fill=colour)

    def polygon(self, points: list[tuple[float, float]], colour: RGB) -> None:
        self.draw.polygon([self.pt(x, y) for x, y in points], fill=colour)

    def digits(self, text: str, centre: tuple[float, float], height: float, colour: RGB) -> None:
        width, stroke, gap = height * 0.42, max(height * 0.13, 1.2 / self.h), height * 0.2
        total = len(text) * width + (len(text) - 1) * gap
        x0 = centre[0] - total / 2 * self.sign
        for i, char in enumerate(text):
            left = x0 + self.sign * i * (width + gap)
            for seg in _DIGITS[int(char)]:
                sx0, sy0, sx1, sy1 = _SEGMENTS[seg]
                # Digits must read left-to-right even on a mirrored painter.
                ax = left + self.sign * sx0 * width
                bx = left + self.sign * sx1 * width
                a = (ax, centre[1] - height / 2 + sy0 * height / 2)
                b = (bx, centre[1] - height / 2 + sy1 * height / 2)
                self.limb(a, b, stroke, colour)


def _draw_person(painter: _Painter, person: Person, pose: Pose) -> None:
    """Draw ``person`` in ``pose``; side views are drawn facing right (the painter mirrors 'left')."""
    side = pose.facing in ("left", "right")
    kit, hr = person.kit, 0.062 * person.head
    neck_y = 2 * hr + 0.005
    sh_y = neck_y + 0.03
    hip_y = 1.0 - person.leg
    sw = person.shoulder * (0.5 if side else 1.0)
    ww = sw * (0.85 if side else 0.8)
    hw = person.hip * (0.45 if side else 1.0)
    lw = person.limb

    def lean(x: float, y: float) -> tuple[float, float]:
        return (x + (pose.lean if side else 0.0) * max(0.0, hip_y - y), y)

    leg_len = 1.0 - (hip_y + 0.03) - 0.025
    legs: list[tuple[Point, Point, Point, float]] = []
    for i, sgn in enumerate((-1.0, 1.0)):
        phase = pose.phase + i * math.pi
        hip = (sgn * hw * 0.55, hip_y + 0.03)
        if side:
            thigh_a = pose.stride * math.sin(phase)
            shin_a = thigh_a - (0.15 + 1.2 * pose.stride * max(0.0, math.cos(phase)))
            knee = (hip[0] + leg_len / 2 * math.sin(thigh_a), hip[1] + leg_len / 2 * math.cos(thigh_a))
            ankle = (knee[0] + leg_len / 2 * math.sin(shin_a), knee[1] + leg_len / 2 * math.cos(shin_a))
        else:
            lift = max(0.0, math.sin(phase)) * pose.stride
            spread = sgn * (0.06 + 0.12 * pose.stride)
            knee = (hip[0] + leg_len / 2 * math.sin(spread), hip[1] + leg_len / 2 * (1 - 0.25 * lift))
            ankle = (knee[0] + leg_len / 2 * math.sin(spread * 0.6),
                     knee[1] + leg_len / 2 * math.cos(spread * 0.6) * (1 - 0.7 * lift))
        legs.append((hip, knee, ankle, 0.75 if side and i == 0 else 1.0))

    arms: list[tuple[Point, Point, Point, float]] = []
    for i, sgn in enumerate((-1.0, 1.0)):
        phase = pose.phase + (1 - i) * math.pi
        if side:
            shoulder = lean(0.0, sh_y + 0.02)
            upper_a = pose.arm_swing * math.sin(phase)
            fore_a = upper_a + 0.3 + 0.9 * pose.arm_swing
        else:
            shoulder = (sgn * sw * 0.92, sh_y + 0.02)
            upper_a = sgn * (pose.arm_spread + 0.1 * pose.arm_swing * math.sin(phase))
            fore_a = upper_a - sgn * 0.1
        elbow = (shoulder[0] + 0.155 * math.sin(upper_a), shoulder[1] + 0.155 * math.cos(upper_a))
        hand = (elbow[0] + 0.145 * math.sin(fore_a), elbow[1] + 0.145 * math.cos(fore_a))
        arms.append((shoulder, lean(*elbow), lean(*hand), 0.75 if side and i == 0 else 1.0))

    def draw_leg(hip: Point, knee: Point, ankle: Point, shade: float) -> None:
        painter.limb(knee, ankle, 0.05 * lw, _shade(person.skin, shade))
        sock_top = (knee[0] + 0.12 * (ankle[0] - knee[0]), knee[1] + 0.12 * (ankle[1] - knee[1]))
        painter.limb(sock_top, ankle, 0.052 * lw, _shade(kit.socks, shade))
        painter.limb(hip, knee, 0.062 * lw, _shade(person.skin, shade))
        mid = (hip[0] + 0.5 * (knee[0] - hip[0]), hip[1] + 0.5 * (knee[1] - hip[1]))
        painter.limb(hip, mid, 0.075 * lw, _shade(kit.shorts, shade))
        boot_dx = 0.035 if side else 0.0
        painter.ellipse((ankle[0] + boot_dx, ankle[1] + 0.012), 0.03 if not side else 0.045, 0.018,
                        _shade(person.boots, shade))

    def draw_arm(shoulder: Point, elbow: Point, hand: Point, shade: float) -> None:
        sleeve = kit.secondary if kit.pattern == "sleeves" else kit.shirt
        painter.limb(elbow, hand, 0.036 * lw, _shade(sleeve if person.long_sleeves else person.skin, shade))
        painter.limb(shoulder, elbow, 0.044 * lw, _shade(person.skin, shade))
        if person.long_sleeves:
            painter.limb(shoulder, elbow, 0.048 * lw, _shade(sleeve, shade))
        else:
            half = (shoulder[0] + 0.55 * (elbow[0] - shoulder[0]),
                    shoulder[1] + 0.55 * (elbow[1] - shoulder[1]))
            painter.limb(shoulder, half, 0.052 * lw, _shade(sleeve, shade))
        glove = person.gloves or person.skin
        painter.ellipse(hand, 0.026 if person.gloves else 0.019, 0.026 if person.gloves else 0.02,
                        _shade(glove, shade))
        if person.flag and shade == 1.0:
            tip = (hand[0] + 0.12, hand[1] - 0.08)
            painter.limb(hand, tip, 0.008, (60, 60, 60))
            painter.polygon([tip, (tip[0] + 0.09, tip[1] + 0.01), (tip[0] + 0.08, tip[1] + 0.07),
                             (tip[0], tip[1] + 0.06)], (250, 220, 30))

    # Far side first so the near limbs overlap it.
    if side:
        draw_arm(*arms[0])
        draw_leg(*legs[0])
        draw_leg(*legs[1])
    else:
        for leg in legs:
            draw_leg(*leg)

    torso = [lean(-sw, sh_y), lean(sw, sh_y), lean(ww, hip_y + 0.01), lean(-ww, hip_y + 0.01)]
    _draw_torso(painter, torso, kit, pose, person)
    painter.polygon([lean(-ww, hip_y - 0.005), lean(ww, hip_y - 0.005),
                     (hw + 0.035, hip_y + 0.07), (-hw - 0.035, hip_y + 0.07)], kit.shorts)
    if person.show_number and pose.facing == "front":
        painter.digits(person.label, (hw * 0.5, hip_y + 0.045), 0.028, kit.number)

    if side:
        draw_arm(*arms[1])
    else:
        for arm in arms:
            draw_arm(*arm)
    painter.limb(lean(0.0, neck_y - 0.01), lean(0.0, sh_y), 0.035, _shade(person.skin, 0.9))
    _draw_head(painter, person, pose, lean(0.0, hr), hr)


def _draw_torso(
    painter: _Painter, torso: list[tuple[float, float]], kit: Kit, pose: Pose, person: Person
) -> None:
    points = [painter.pt(x, y) for x, y in torso]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    box = (math.floor(min(xs)) - 1, math.floor(min(ys)) - 1, math.ceil(max(xs)) + 2, math.ceil(max(ys)) + 2)
    size = (box[2] - box[0], box[3] - box[1])
    layer = Image.new("RGB", size, kit.shirt)
    draw = ImageDraw.Draw(layer)
    w, h = size
    if kit.pattern == "stripes":
        step = max(2, w // 5)
        for x in range(step // 2, w, 2 * step):
            draw.rectangle([x, 0, x + step - 1, h], fill=kit.secondary)
    elif kit.pattern == "hoops":
        step = max(2, h // 6)
        for y in range(step, h, 2 * step):
            draw.rectangle([0, y, w, y + step - 1], fill=kit.secondary)
    elif kit.pattern == "halves":
        draw.rectangle([w // 2, 0, w, h], fill=kit.secondary)
    elif kit.pattern == "sash":
        band = max(2, w // 4)
        draw.polygon([(0, h * 0.1), (band, 0), (w, h * 0.9 - band), (w - band, h)], fill=kit.secondary)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon([(x - box[0], y - box[1]) for x, y in points], fill=255)
    painter.canvas.paste(layer, box[:2], mask)
    if not person.show_number:
        return
    sh_y, hip_y = torso[0][1], torso[2][1]
    cx = (torso[0][0] + torso[1][0]) / 2
    if pose.facing == "back":
        painter.digits(person.label, (cx, sh_y + 0.35 * (hip_y - sh_y)), 0.11, kit.number)
    elif pose.facing == "front":
        painter.digits(person.label, (cx - 0.4 * (torso[1][0] - torso[0][0]) / 2, sh_y + 0.06), 0.04,
                       kit.number)


def _draw_head(painter: _Painter, person: Person, pose: Pose, centre: tuple[float, float], r: float) -> None:
    cx, cy = centre
    style, hair, skin = person.hair_style, person.hair, person.skin
    side = pose.facing in ("left", "right")
    if style == "afro":
        painter.ellipse((cx - (0.2 * r if side else 0.0), cy - 0.25 * r), 1.35 * r, 1.2 * r, hair)
    if style == "long":
        back = -0.5 * r if side else 0.0
        painter.polygon([(cx + back - 0.95 * r, cy - 0.2 * r), (cx + back + 0.95 * r, cy - 0.2 * r),
                         (cx + back + 1.0 * r, cy + 2.0 * r), (cx + back - 1.0 * r, cy + 2.0 * r)], hair)
    if pose.facing == "back":
        painter.ellipse(centre, 0.85 * r, r, skin if style == "bald" else hair)
        if style == "buzz":
            painter.ellipse((cx, cy + 0.45 * r), 0.7 * r, 0.5 * r, skin)
    else:
        painter.ellipse(centre, 0.85 * r, r, skin)
        x0, y0 = painter.pt(cx - 0.9 * r, cy - 1.08 * r)
        x1, y1 = painter.pt(cx + 0.9 * r, cy + 1.0 * r)
        box = [min(x0, x1), y0, max(x0, x1), y1]
        arcs = {"buzz": (195, 345), "short": (175, 365), "long": (170, 370),
                "afro": (160, 380), "bun": (175, 365)}
        if style in arcs:
            start, end = arcs[style]
            if side:  # cover the back of the head; the painter mirrors for 'left'
                start, end = (start - 80, end) if painter.sign > 0 else (start, end + 80)
            painter.draw.chord(box, start, end, fill=hair)
        if not side:
            ex = 0.35 * r
            for sx in (-ex, ex):
                painter.ellipse((cx + sx, cy + 0.1 * r), 0.1 * r, 0.08 * r, (40, 30, 30))
    if style == "bun":
        painter.ellipse((cx - (0.7 * r if side else 0.0), cy - 1.05 * r), 0.38 * r, 0.33 * r, hair)


def _pitch(rng: np.random.Generator, width: int, height: int, base: RGB) -> Image.Image:
    """Grass with mowing stripes at a random angle, plus a few white pitch lines (RGB, W x H)."""
    pitch = Image.new("RGB", (width, height), base)
    draw = ImageDraw.Draw(pitch)
    # Stripes as polygons: far cheaper than per-pixel numpy at the supersampled size.
    angle = rng.uniform(0, math.pi)
    nx, ny = math.cos(angle), math.sin(angle)
    band = rng.uniform(0.35, 1.2) * height
    reach = width + height
    dark = _shade(base, float(rng.uniform(0.8, 0.92)))
    offset = rng.uniform(0, 2 * band)
    s = -reach - offset
    while s < reach:
        s0, s1 = s, s + band
        corners = [(s0, reach), (s0, -reach), (s1, -reach), (s1, reach)]  # (along normal, along band)
        draw.polygon([(nx * u - ny * v, ny * u + nx * v) for u, v in corners], fill=dark)
        s += 2 * band
    line_colour = tuple(min(255, int(v * 0.4 + 150)) for v in base)
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        thickness = max(1, round(rng.uniform(0.008, 0.02) * height))
        if rng.random() < 0.25:
            r = rng.uniform(0.6, 2.0) * height
            cx, cy = rng.uniform(-r, width + r), rng.uniform(-r, height + r)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=line_colour, width=thickness)
        else:
            a = rng.uniform(0, math.pi)
            px, py = rng.uniform(0, width), rng.uniform(0, height)
            dx, dy = reach * math.cos(a), reach * math.sin(a)
            draw.line([(px - dx, py - dy), (px + dx, py + dy)], fill=line_colour, width=thickness)
    return pitch


def render_crop(
    rng: np.random.Generator,
    person: Person,
    size: tuple[int, int],
    grass: RGB = (56, 128, 52),
    occluder: Person | None = None,
    occlusion_in_front: bool = False,
    low_res_p: float = 0.4,
    variable_size: bool = False,
) -> Image.Image:
    """One view of ``person`` as an RGB crop of ``size`` = (H, W) (smaller when ``variable_size``)."""
    height, width = size
    ch, cw = height * SUPERSAMPLE, width * SUPERSAMPLE
    base = _jitter(rng, grass, 6.0)
    canvas = _pitch(rng, cw, ch, base)
    scale = rng.uniform(0.8, 0.95)
    body_h = ch * scale
    top = (ch - body_h) / 2 + rng.uniform(-0.03, 0.03) * ch
    cx = cw / 2 + rng.uniform(-0.07, 0.07) * cw

    def draw(who: Person, x: float, y: float, h: float) -> None:
        pose = _random_pose(rng)
        shadow = _shade(base, 0.6)
        d = ImageDraw.Draw(canvas)
        d.ellipse([x - 0.14 * h, y + 0.97 * h, x + 0.14 * h, y + 1.02 * h], fill=shadow)
        _draw_person(_Painter(canvas, x, y, h, mirror=pose.facing == "left"), who, pose)

    if occluder is not None:
        side = 1.0 if rng.random() < 0.5 else -1.0
        ox = cx + side * rng.uniform(0.45, 0.7) * cw
        oh = body_h * rng.uniform(0.85, 1.1)
        oy = top + body_h - oh + rng.uniform(-0.02, 0.06) * ch
        if occlusion_in_front:
            draw(person, cx, top, body_h)
            draw(occluder, ox, oy, oh)
        else:
            draw(occluder, ox, oy, oh)
            draw(person, cx, top, body_h)
    else:
        draw(person, cx, top, body_h)

    crop = canvas.reduce(SUPERSAMPLE)
    # Broadcast look: light level, colour cast and gradients, sensor noise, then blur / resolution loss.
    array = np.asarray(crop, dtype=np.float32)
    gain = (rng.uniform(0.75, 1.2) * rng.uniform(0.93, 1.07, 3)).astype(np.float32)
    across = 1.0 + rng.uniform(-0.15, 0.15) * np.linspace(-1, 1, width, dtype=np.float32)
    down = 1.0 + rng.uniform(-0.1, 0.1) * np.linspace(-1, 1, height, dtype=np.float32)
    array *= gain[None, None, :] * across[None, :, None] * down[:, None, None]
    # Own generator for the noise: its draw count depends on the crop size, and the scene plan must not.
    noise = np.random.default_rng(int(rng.integers(0, 2**63 - 1))).standard_normal(array.shape, dtype=np.float32)
    array += 3.0 * noise
    crop = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")
    radius = rng.choice([0.0, 0.0, rng.uniform(0.3, 1.2)])
    if radius > 0:
        crop = crop.filter(ImageFilter.GaussianBlur(float(radius)))
    if rng.random() < low_res_p or variable_size:
        factor = rng.uniform(0.3, 0.9)
        small = (max(4, round(width * factor)), max(8, round(height * factor)))
        crop = crop.resize(small, Image.Resampling.BILINEAR)
        if not variable_size:
            crop = crop.resize((width, height), Image.Resampling.BILINEAR)
    return crop


# ---------------------------------------------------------------------------------------------- writing


@dataclass
class _Counters:
    person_uid: int = 0  # unique across every split, as in SoccerNet


@dataclass
class _SplitWriter:
    """Numbers bboxes per list (train / query / gallery) and actions/frames per split, like SoccerNet."""

    root: Path
    config: SyntheticConfig
    flat: bool = False
    bbox: dict[str, int] = field(default_factory=dict)
    action_idx: int = 0
    frame_idx: int = 0
    images: int = 0

    def write(self, image: Image.Image, part: str, rel: Path, name: SoccerNetName) -> None:
        idx = self.bbox.get(part, 0)
        self.bbox[part] = idx + 1
        fields = {**asdict(name), "bbox_idx": idx, "height": image.height, "width": image.width}
        final = SoccerNetName(**fields)
        if self.flat:
            final = SoccerNetName(final.bbox_idx, final.action_idx, final.height, final.width)
            folder = self.root / part
        else:
            folder = self.root / part / rel if part else self.root / rel
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / final.filename(), compress_level=self.config.png_compress_level)
        self.images += 1


def _write_action(
    rng: np.random.Generator,
    game: _Game,
    action_in_game: int,
    writer: _SplitWriter,
    counters: _Counters,
    split: str,
    grass: RGB,
) -> int:
    cfg = writer.config
    weights = np.asarray([0.5 if p.clazz == "Side_referee" else 1.0 for p in game.roster])
    chosen = rng.choice(len(game.roster), cfg.players_per_action, replace=False, p=weights / weights.sum())
    people = [game.roster[i] for i in chosen]
    n_replays = cfg.views - 1
    frames: list[list[int]] = []  # frames[f] = indices into people visible in frame f
    visible = np.zeros((len(people), cfg.views), dtype=bool)
    visible[:, 0] = True
    # Stochastic rounding keeps the distractor count close to the requested fraction in every action.
    n_distractors = int(cfg.distractor_fraction * len(people) + rng.random())
    distractors = set(rng.choice(len(people), size=n_distractors, replace=False).tolist())
    for i in range(len(people)):
        if n_replays == 0 or i in distractors:
            continue
        seen = rng.random(n_replays) < cfg.replay_visibility
        if not seen.any():
            seen[rng.integers(n_replays)] = True
        visible[i, 1:] = seen
    frames = [list(np.flatnonzero(visible[:, f])) for f in range(cfg.views)]
    uids = []
    for _ in people:
        uids.append(str(counters.person_uid))
        counters.person_uid += 1
    uai_base = f"{int(rng.integers(0, 1 << 24)):06x}"
    rel = Path(game.league, game.season, game.name, str(action_in_game))
    for f, members in enumerate(frames):
        frame_idx = writer.frame_idx + f
        for i in members:
            person = people[i]
            matched = visible[i].sum() > 1
            others = [game.roster[j] for j in range(len(game.roster)) if game.roster[j] is not person]
            occluder = others[rng.integers(len(others))] if rng.random() < cfg.occlusion_p else None
            image = render_crop(
                rng, person, (cfg.height, cfg.width), grass, occluder, bool(rng.random() < 0.5),
                cfg.low_res_p, cfg.variable_size,
            )
            name = SoccerNetName(
                bbox_idx=0, action_idx=writer.action_idx, height=0, width=0,
                person_uid=uids[i], frame_idx=frame_idx, clazz=person.clazz,
                id=person.label if matched else "None", uai=f"{uai_base}f{f:02d}p{i:02d}",
            )
            part = ""  # train crops go straight into the action folder
            if split != "train":
                part = "query" if f == 0 and matched else "gallery"
            writer.write(image, part, rel, name)
    writer.frame_idx += cfg.views
    writer.action_idx += 1
    return int(visible.sum())


def generate_soccernet_tree(out_dir: str | Path, config: SyntheticConfig | None = None) -> dict[str, object]:
    """Write a synthetic SoccerNet-ReID tree under ``out_dir`` and return a summary dict
    (per split: games, actions, identities, images, query, gallery; total images; seconds; config)."""
    cfg = config or SyntheticConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    seeds = np.random.SeedSequence(cfg.seed)
    counters = _Counters()
    splits: dict[str, dict[str, int]] = {}
    plan = (("train", cfg.train_games), ("valid", cfg.valid_games), ("test", cfg.test_games),
            ("challenge", cfg.challenge_games))
    for split, n_games in plan:
        split_seed = seeds.spawn(1)[0]
        if n_games == 0:
            continue
        root = out / split
        root.mkdir(parents=True, exist_ok=True)
        (root / "SYNTHETIC.txt").write_text(SYNTHETIC_NOTE)
        writer = _SplitWriter(root, cfg, flat=split == "challenge")
        identities = 0
        for g, game_seed in enumerate(split_seed.spawn(n_games)):
            rng = np.random.default_rng(game_seed)
            game = _make_game(rng, g, split)
            grass = _jitter(rng, (56, 128, 52), 10.0)
            for a in range(cfg.actions_per_game):
                _write_action(rng, game, a, writer, counters, split, grass)
                identities += cfg.players_per_action
        splits[split] = {
            "games": n_games,
            "actions": writer.action_idx,
            "identities": identities,
            "images": writer.images,
            "query": writer.bbox.get("query", 0),
            "gallery": writer.bbox.get("gallery", 0),
        }
        logger.info("synthetic %s: %s", split, splits[split])
    seconds = time.perf_counter() - start
    total = sum(s["images"] for s in splits.values())
    summary: dict[str, object] = {
        "synthetic": True,
        "out_dir": str(out),
        "splits": splits,
        "images": total,
        "seconds": round(seconds, 3),
        "images_per_second": round(total / seconds, 1) if seconds > 0 else None,
        "config": asdict(cfg),
    }
    (out / "SYNTHETIC.txt").write_text(SYNTHETIC_NOTE)
    (out / "synthetic_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def synthetic_main(argv: list[str] | None = None) -> int:
    """Console entry point: write a synthetic SoccerNet-ReID tree; returns the exit status."""
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(
        prog="reid-synthetic",
        description="Write SYNTHETIC football-player crops in the SoccerNet-ReID layout.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--games", type=int, default=defaults.train_games, help="training games")
    parser.add_argument("--eval-games", type=int, default=None,
                        help="games in valid and in test each (default: max(1, games // 4))")
    parser.add_argument("--challenge-games", type=int, default=0,
                        help="games in the unlabelled challenge split")
    parser.add_argument("--actions-per-game", type=int, default=defaults.actions_per_game)
    parser.add_argument("--players-per-action", type=int, default=defaults.players_per_action)
    parser.add_argument("--views", type=int, default=defaults.views,
                        help="frames per action: 1 action frame + views-1 replays")
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--variable-size", action="store_true", help="save crops at their (smaller) own size")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    eval_games = args.eval_games if args.eval_games is not None else max(1, args.games // 4)
    try:
        config = SyntheticConfig(
            train_games=args.games, valid_games=eval_games, test_games=eval_games,
            challenge_games=args.challenge_games, actions_per_game=args.actions_per_game,
            players_per_action=args.players_per_action, views=args.views, height=args.height,
            width=args.width, seed=args.seed, variable_size=args.variable_size,
        )
    except ValueError as exc:
        parser.error(str(exc))
    summary = generate_soccernet_tree(args.out, config)
    logger.info("wrote %s synthetic crops to %s in %.1f s (%s crops/s); summary in %s",
                summary["images"], args.out, summary["seconds"], summary["images_per_second"],
                args.out / "synthetic_summary.json")
    return 0
