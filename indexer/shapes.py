"""Deterministic synthetic "shapes" pictures with captions (the demo's and the tiny models').

Every picture is a plain (noisy, slightly jittered) background with one shape on it: a
circle, square, triangle, star or cross, in one of eight colours, small or large, at one
of five named positions. Each picture gets two captions: a canonical one
("a large red circle on a blue background") and a paraphrase picked from a few templates.

Within one dataset the (shape, colour, size, background) combinations are drawn without
replacement from a seeded permutation of all 560 combinations, so any dataset of at most
560 pictures has pictures that are uniquely described by their canonical caption (useful
to measure retrieval recall@1). Larger datasets cycle through fresh permutations.

Output layout (``make_dataset(out_dir, seed, count)``)::

    out_dir/images/000000.jpg ...
    out_dir/captions.csv      header ``path,caption``; 2 rows per image, path relative to out_dir
    out_dir/attributes.csv    header ``path,shape,colour,size,background,position``

The tiny models shipped as the ``demo`` model were trained on these pictures, so they
recognise them (``indexer/demo.py`` builds a photo-like collection from them). Command line:
``python scripts/make_synthetic_dataset.py --seed 1234 --count 200 --out /tmp/shapes``.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

IMAGE_SIZE = 128
_SUPERSAMPLE = 2
JPEG_QUALITY = 92

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "green": (35, 165, 55),
    "blue": (35, 70, 215),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "purple": (135, 45, 180),
    "orange": (245, 135, 20),
}
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5),
    "left": (0.28, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
}
POSITION_PHRASES: dict[str, str] = {
    "center": "in the center",
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
# Paraphrase templates used for the second caption of every picture.
PARAPHRASES: tuple[str, ...] = (
    "a {size} {colour} {shape} {pos} of a {bg} background",
    "a photo of a {size} {colour} {shape} on {bg}",
    "{bg} background with a {size} {colour} {shape} {pos}",
    "a picture of a {size} {colour} {shape} {pos}, {bg} background",
)
CANONICAL = "a {size} {colour} {shape} on a {bg} background"
# Partial descriptions (queries naming only some attributes). Not written to captions.csv;
# the CLIP training script mixes them in so that short queries ("a red circle") work too.
PARTIAL_TEMPLATES: tuple[str, ...] = (
    "a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {size} {shape}",
    "a {shape}",
    "a {colour} {shape} on a {bg} background",
    "a {shape} on a {bg} background",
    "a {colour} {shape} {pos}",
    "a picture with a {bg} background",
)
#: Template field -> ``Sample`` attribute.
FIELDS: dict[str, str] = {
    "shape": "shape",
    "colour": "colour",
    "size": "size",
    "bg": "background",
    "pos": "position",
}

# All (shape, colour, size, background) combinations; the background differs from the shape.
COMBOS: tuple[tuple[str, str, str, str], ...] = tuple(
    (shape, colour, size, bg)
    for shape, colour, size, bg in itertools.product(SHAPES, COLOURS, SIZES, COLOURS)
    if bg != colour
)


@dataclass(frozen=True)
class Sample:
    """One generated picture and its ground truth."""

    path: str  # relative to the dataset folder
    shape: str
    colour: str
    size: str
    background: str
    position: str
    captions: tuple[str, str]
    templates: tuple[str, str]  # the templates of the two captions

    def describe(self, template: str) -> str:
        """``template`` (fields ``{size} {colour} {shape} {bg} {pos}``) filled for this picture."""
        return _fill(template, self.shape, self.colour, self.size, self.background, self.position)


def template_fields(template: str) -> frozenset[str]:
    """The ``Sample`` attributes a template names (e.g. ``{"colour", "shape"}``)."""
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return frozenset(FIELDS[n] for n in names)


def _fill(template: str, shape: str, colour: str, size: str, bg: str, position: str) -> str:
    text = template.format(
        size=size, colour=colour, shape=shape, bg=bg, pos=POSITION_PHRASES[position]
    )
    return _fix_articles(text)


def caption_vocabulary() -> list[str]:
    """Every word that can appear in a generated caption (for vocabulary-sparse models)."""
    words: set[str] = set()
    fills = {
        "size": " ".join(SIZES),
        "colour": " ".join(COLOURS),
        "shape": " ".join(SHAPES),
        "bg": " ".join(COLOURS),
        "pos": " ".join(POSITION_PHRASES.values()),
    }
    for template in (CANONICAL, *PARAPHRASES, *PARTIAL_TEMPLATES):
        words.update(template.format(**fills).replace(",", " , ").split())
    words.add("an")
    return sorted(words)


def _fix_articles(text: str) -> str:
    """Use "an" before vowel-initial words ("an orange star")."""
    words = text.split(" ")
    for i in range(len(words) - 1):
        if words[i] == "a" and words[i + 1][:1] in "aeiou":
            words[i] = "an"
    return " ".join(words)


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    delta = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + delta, 0, 255))


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        pts = []
        for k in range(3):
            a = -math.pi / 2 + k * 2 * math.pi / 3
            pts.append((cx + r * math.cos(a), cy + 0.15 * r + r * math.sin(a)))
        return pts
    if shape == "star":
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.33
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w),
            (cx + r, cy + w), (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r),
            (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def render(
    shape: str,
    colour: str,
    size: str,
    background: str,
    position: str,
    rng: np.random.Generator,
    canvas: tuple[int, int] | None = None,
) -> Image.Image:
    """Render one picture; all randomness (jitter, noise) comes from ``rng``.

    ``canvas`` (width, height) renders a larger picture: the shape sits in the centred
    square of side ``min(width, height)`` (what CLIP's resize and centre crop see) as it
    would in a default 128-pixel picture, with more background around it.
    """
    width, height = canvas or (IMAGE_SIZE, IMAGE_SIZE)
    side = min(width, height)
    # Large pictures need no supersampling (and it would cost 4x the drawing and a resize).
    ss = _SUPERSAMPLE if side <= 2 * IMAGE_SIZE else 1
    big = side * ss
    bg_rgb = _jitter(COLOURS[background], rng, 18)
    fg_rgb = _jitter(COLOURS[colour], rng, 18)
    frac = rng.uniform(0.14, 0.17) if size == "small" else rng.uniform(0.28, 0.34)
    r = frac * big
    px, py = POSITIONS[position]
    cx = (px + rng.uniform(-0.05, 0.05)) * big
    cy = (py + rng.uniform(-0.05, 0.05)) * big
    cx = float(np.clip(cx, r + 2, big - r - 2)) + (width - side) * ss / 2
    cy = float(np.clip(cy, r + 2, big - r - 2)) + (height - side) * ss / 2
    img = Image.new("RGB", (width * ss, height * ss), bg_rgb)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg_rgb)
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r), fill=fg_rgb)
    if ss != 1:
        img = img.resize((width, height), Image.Resampling.LANCZOS)
    if canvas is None:
        arr = np.asarray(img, dtype=np.float32)
        grainy = arr + rng.normal(0.0, 7.0, size=arr.shape)
        return Image.fromarray(np.clip(grainy, 0, 255).round().astype(np.uint8), "RGB")
    # The same grain from a repeated tile: drawing fresh noise for a megapixel picture
    # took most of its rendering time.
    tile = rng.normal(0.0, 3.0, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).round().astype(np.int16)
    reps = (-(-height // IMAGE_SIZE), -(-width // IMAGE_SIZE), 1)
    noisy = np.asarray(img, dtype=np.int16) + np.tile(tile, reps)[:height, :width]
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def generate_samples(seed: int, count: int) -> list[Sample]:
    """The ground truth of a dataset (no pictures rendered)."""
    rng = np.random.default_rng([seed, 0])
    samples: list[Sample] = []
    order: list[int] = []
    for i in range(count):
        if not order:
            order = list(rng.permutation(len(COMBOS)))
        shape, colour, size, bg = COMBOS[order.pop()]
        position = str(rng.choice(list(POSITIONS)))
        template = PARAPHRASES[int(rng.integers(len(PARAPHRASES)))]
        captions = (
            _fill(CANONICAL, shape, colour, size, bg, position),
            _fill(template, shape, colour, size, bg, position),
        )
        samples.append(
            Sample(
                f"images/{i:06d}.jpg",
                shape,
                colour,
                size,
                bg,
                position,
                captions,
                (CANONICAL, template),
            )
        )
    return samples


def make_dataset(out_dir: str | Path, seed: int, count: int) -> Path:
    """Write ``count`` pictures + ``captions.csv`` + ``attributes.csv`` into ``out_dir``.

    Deterministic in ``seed``; returns ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    samples = generate_samples(seed, count)
    for i, s in enumerate(samples):
        rng = np.random.default_rng([seed, 1, i])
        img = render(s.shape, s.colour, s.size, s.background, s.position, rng)
        img.save(out / s.path, format="JPEG", quality=JPEG_QUALITY)
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        for s in samples:
            for c in s.captions:
                w.writerow([s.path, c])
    with open(out / "attributes.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "shape", "colour", "size", "background", "position"])
        for s in samples:
            w.writerow([s.path, s.shape, s.colour, s.size, s.background, s.position])
    return out
