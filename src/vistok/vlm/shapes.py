"""Procedural visual questions with known one-word answers: scenes of coloured shapes and a rendered word.

``questions(n, seed=0, split="train")`` yields :class:`Question` items (a Pillow image, a question, its
one-word answer, the question's kind and split). Everything is drawn with Pillow from a seed, so the same
``(seed, split, index)`` always gives the same image bytes and text, and no data set is downloaded.

A scene is a 3 x 3 grid of cells on a dark canvas. Two to six shapes (:data:`SHAPES`) in seven colours
(:data:`COLOURS`), each small or large, sit in distinct cells (so they never overlap), jittered inside their
cell; a scene may also hold one rendered three-letter word (:data:`WORDS`) or a digit from 0 to 9, in white,
in a cell of its own. Question kinds (:data:`KINDS`), each with its answers drawn uniformly:

==========  ==========================================  =====================================
kind        example                                     answers
==========  ==========================================  =====================================
colour      what colour is the large square ?           a colour (the named object is unique)
shape       what shape is at the top left ?             a shape (cells hold one object each)
count       how many circles are there ?                "0" .. "6"
relation    is the red circle left of the blue star ?   yes / no (left of, right of, above, below)
exists      is there a green triangle ?                 yes / no
text        what word is written ? / what number ...    a word of :data:`WORDS` or "0" .. "9"
==========  ==========================================  =====================================

The question mark is its own word, so ``question.split()`` gives words of :func:`vocabulary` and the answer
is one of them too. Kinds cycle in the order given (question ``i`` has kind ``kinds[i % len(kinds)]``).

Splits are disjoint streams: each question's random generator is seeded from ``(split, seed, index)``.
The colour-shape pairs in :data:`HELD_OUT` (red triangle, blue star, green cross) are never drawn, and never
named in a question, in the ``"train"`` split; ``"val"`` and ``"test"`` use every pair, so a model trained on
``"train"`` is tested on combinations it has not seen.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache

from PIL import Image, ImageDraw, ImageFont

__all__ = ["KINDS", "SHAPES", "COLOURS", "SIZES", "POSITIONS", "WORDS", "HELD_OUT", "SPLITS", "Item",
           "Question", "questions", "question_sets", "scene", "vocabulary"]

KINDS: tuple[str, ...] = ("colour", "shape", "count", "relation", "exists", "text")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
                           "cross": "crosses"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235), "yellow": (240, 220, 40),
    "purple": (150, 60, 200), "orange": (250, 140, 30), "cyan": (40, 210, 220),
}
SIZES: tuple[str, ...] = ("small", "large")
#: Cell names, row-major over the 3 x 3 grid.
POSITIONS: tuple[str, ...] = ("top left", "top middle", "top right", "middle left", "centre", "middle right",
                              "bottom left", "bottom middle", "bottom right")
WORDS: tuple[str, ...] = ("cat", "dog", "sun", "car", "box", "hat", "cup", "key", "map", "pen", "fox", "bus")
#: Colour-shape pairs absent from the "train" split (images and questions), present in "val" and "test".
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("red", "triangle"), ("blue", "star"), ("green", "cross")})
SPLITS: tuple[str, ...] = ("train", "val", "test")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

BACKGROUND = (24, 24, 28)
TEXT_COLOUR = (255, 255, 255)
GRID = 3
MIN_SIZE = 48
_RADIUS = {"small": 0.24, "large": 0.42}  # shape radius as a fraction of the cell side
_TEXT_SIZE = 0.42  # font size as a fraction of the cell side


@dataclass(frozen=True)
class Item:
    """One thing drawn in a scene: a shape, or the rendered text (``shape == "text"``).

    ``row``/``col`` index the 3 x 3 grid cell (``POSITIONS[3 * row + col]`` names it); ``centre``, ``radius``
    (of the circle the shape is drawn in) and ``box`` (left, top, right, bottom, inclusive) are in pixels. Text items have ``colour == "white"``, ``size == ""`` and the
    rendered string in ``text``; ``box`` is then the text's ink box.
    """

    shape: str
    colour: str
    size: str
    row: int
    col: int
    centre: tuple[float, float]
    box: tuple[int, int, int, int]
    radius: float = 0.0
    text: str = ""

    @property
    def position(self) -> str:
        """The cell's name, e.g. ``"top left"``."""
        return POSITIONS[GRID * self.row + self.col]


@dataclass(frozen=True)
class Question:
    """A rendered scene with one question and its one-word answer; ``objects`` describes the scene."""

    image: Image.Image
    question: str
    answer: str
    kind: str
    split: str
    objects: tuple[Item, ...] = field(default=(), repr=False, compare=False)


def vocabulary() -> list[str]:
    """Every word that can appear in a question or an answer (lower-case, whitespace-split), sorted."""
    words = {"?", "a", "what", "colour", "is", "the", "shape", "at", "how", "many", "are", "there", "of", "word",
             "number", "written", "yes", "no", "describe", "image", ","}
    words.update(SHAPES, PLURALS.values(), COLOURS, SIZES, WORDS)
    words.update(w for p in POSITIONS for w in p.split())
    words.update(w for r in RELATIONS for w in r.split())
    words.update(str(i) for i in range(10))
    return sorted(words)


def questions(n: int, *, seed: int = 0, split: str = "train", size: int = 224,
              kinds: Sequence[str] = KINDS) -> Iterator[Question]:
    """Yield ``n`` questions of ``split`` (``"train"``, ``"val"`` or ``"test"``) on ``size`` x ``size`` images.

    Deterministic in ``(seed, split, index)``; kinds cycle in the order of ``kinds``. Raises ``ValueError``
    on a negative ``n``, an unknown split or kind, or a size under 48 pixels.
    """
    n = _check_int("n", n, minimum=0)
    seed = _check_int("seed", seed)
    _check_split(split)
    size = _check_int("size", size, minimum=MIN_SIZE)
    kinds = _check_kinds(kinds)
    return _generate(n, seed, split, size, kinds)


def question_sets(n: int, *, seed: int = 0, split: str = "train", size: int = 224, per_image: int = 6,
                  kinds: Sequence[str] = KINDS, describe: bool = False) -> Iterator[tuple[Question, ...]]:
    """Yield ``n`` scenes, each as up to ``per_image`` questions about the same image (one image object).

    The first question of set ``i`` is ``questions(n, ...)``'s question ``i`` (same scene, text and
    answer); the others are drawn from the scene's own objects, one per kind in the order of ``kinds``
    after the first's, skipping a kind the scene cannot answer (no text; no object whose colour a
    question can single out). Asking several questions of one image makes training data cheap: the
    vision tower runs once per image. Their answers follow the scene rather than being balanced.

    ``describe=True`` adds one more item of kind ``"describe"``: ``"describe the image ?"`` answered by
    every object in reading order (``"large red circle top left , word cat centre"``), the caption-style
    supervision of LLaVA's first training stage (Liu et al., 2023), which teaches the projector and the
    attention where things are before the questions ask about them.
    """
    n = _check_int("n", n, minimum=0)
    seed = _check_int("seed", seed)
    _check_split(split)
    size = _check_int("size", size, minimum=MIN_SIZE)
    per_image = _check_int("per_image", per_image, minimum=1)
    kinds = _check_kinds(kinds)
    return _generate_sets(n, seed, split, size, kinds, per_image, describe)


def describe(objects: Sequence[Item]) -> str:
    """Every object in reading order (by cell): ``"large red circle top left , number 7 centre"``."""
    parts = []
    for o in sorted(objects, key=lambda o: (o.row, o.col)):
        what = (f"{'number' if o.text.isdigit() else 'word'} {o.text}" if o.shape == "text"
                else f"{o.size} {o.colour} {o.shape}")
        parts.append(f"{what} {o.position}")
    return " , ".join(parts)


def _generate_sets(n: int, seed: int, split: str, size: int, kinds: tuple[str, ...], per_image: int,
                   caption: bool = False) -> Iterator[tuple[Question, ...]]:
    for index, first in enumerate(_generate(n, seed, split, size, kinds)):
        rng = random.Random(f"vistok.vlm.shapes/{split}/{seed}/{index}/more")
        start = kinds.index(first.kind)
        order = [kinds[(start + k) % len(kinds)] for k in range(1, len(kinds))]
        made = [first]
        for kind in order:
            if len(made) >= per_image:
                break
            asked = _ASK_ABOUT[kind](rng, first.objects, _pairs(split))
            if asked is not None:
                made.append(Question(first.image, asked[0], asked[1], kind, split, first.objects))
        if caption:
            made.append(Question(first.image, "describe the image ?", describe(first.objects), "describe", split,
                                 first.objects))
        yield tuple(made)


def scene(seed: int, size: int = 224, *, split: str = "train") -> tuple[Image.Image, tuple[Item, ...]]:
    """A random scene (2 to 6 shapes, text half the time) and its items, deterministic in ``seed``/``split``."""
    seed = _check_int("seed", seed)
    size = _check_int("size", size, minimum=MIN_SIZE)
    _check_split(split)
    rng = random.Random(f"vistok.vlm.shapes/scene/{split}/{seed}")
    pairs = _pairs(split)
    shapes = [(*rng.choice(pairs), rng.choice(SIZES)) for _ in range(rng.randint(2, 6))]
    text = _random_text(rng) if rng.random() < 0.5 else None
    items = _layout(rng, size, shapes, text)
    return _draw(size, items), items


# ---------------------------------------------------------------------------------------------- questions


def _generate(n: int, seed: int, split: str, size: int, kinds: tuple[str, ...]) -> Iterator[Question]:
    for index in range(n):
        kind = kinds[index % len(kinds)]
        rng = random.Random(f"vistok.vlm.shapes/{split}/{seed}/{index}")
        shapes, text, cells, question, answer = _MAKERS[kind](rng, _pairs(split))
        if text is None and kind != "text" and rng.random() < 0.5:
            text = _random_text(rng)
        items = _layout(rng, size, shapes, text, cells)
        yield Question(_draw(size, items), question, answer, kind, split, items)


Spec = tuple[str, str, str]  # (colour, shape, size)
Made = tuple[list[Spec], tuple[str, str] | None, dict[int, int], str, str]


def _colour_question(rng: random.Random, pairs: Sequence[tuple[str, str]]) -> Made:
    colour = rng.choice(list(COLOURS))
    shape = rng.choice([s for c, s in pairs if c == colour])
    size = rng.choice(SIZES)
    shapes = [(colour, shape, size)]
    named = ""
    if rng.random() < 0.5:  # a second one of the shape, in the other size: the question must name the size
        other = "small" if size == "large" else "large"
        shapes.append((rng.choice([c for c, s in pairs if s == shape]), shape, other))
        named = size + " "
    shapes += _others(rng, pairs, rng.randint(max(0, 2 - len(shapes)), 6 - len(shapes)),
                      lambda c, s: s != shape)
    rng.shuffle(shapes)
    return shapes, None, {}, f"what colour is the {named}{shape} ?", colour


def _shape_question(rng: random.Random, pairs: Sequence[tuple[str, str]]) -> Made:
    shape = rng.choice(SHAPES)
    cell = rng.randrange(GRID * GRID)
    target = (rng.choice([c for c, s in pairs if s == shape]), shape, rng.choice(SIZES))
    shapes = [target] + _others(rng, pairs, rng.randint(1, 5))
    return shapes, None, {0: cell}, f"what shape is at the {POSITIONS[cell]} ?", shape


def _count_question(rng: random.Random, pairs: Sequence[tuple[str, str]]) -> Made:
    count = rng.randint(0, 6)
    shape = rng.choice(SHAPES)
    colours = [c for c, s in pairs if s == shape]
    shapes = [(rng.choice(colours), shape, rng.choice(SIZES)) for _ in range(count)]
    shapes += _others(rng, pairs, rng.randint(max(0, 2 - count), 6 - count), lambda c, s: s != shape)
    rng.shuffle(shapes)
    return shapes, None, {}, f"how many {PLURALS[shape]} are there ?", str(count)


def _relation_question(rng: random.Random, pairs: Sequence[tuple[str, str]]) -> Made:
    first, second = rng.sample(pairs, 2)
    relation = rng.choice(RELATIONS)
    answer = rng.choice(("yes", "no"))
    axis = 1 if relation in ("left of", "right of") else 0  # compare columns or rows
    while True:  # two cells that differ along the axis
        a, b = rng.sample(range(GRID * GRID), 2)
        if divmod(a, GRID)[axis] != divmod(b, GRID)[axis]:
            break
    holds = divmod(a, GRID)[axis] < divmod(b, GRID)[axis]
    if relation in ("right of", "below"):
        holds = not holds
    if holds != (answer == "yes"):
        a, b = b, a
    shapes = [(*first, rng.choice(SIZES)), (*second, rng.choice(SIZES))]
    shapes += _others(rng, pairs, rng.randint(0, 4), lambda c, s: (c, s) not in (first, second))
    question = f"is the {first[0]} {first[1]} {relation} the {second[0]} {second[1]} ?"
    return shapes, None, {0: a, 1: b}, question, answer


def _exists_question(rng: random.Random, pairs: Sequence[tuple[str, str]]) -> Made:
    colour, shape = rng.choice(pairs)
    answer = rng.choice(("yes", "no"))
    shapes: list[Spec] = []
    if answer == "yes":
        shapes.append((colour, shape, rng.choice(SIZES)))
    elif rng.random() < 0.7:  # a near miss: same colour or same shape
        near = [(c, s) for c, s in pairs if (c == colour) != (s == shape)]
        shapes.append((*rng.choice(near), rng.choice(SIZES)))
    shapes += _others(rng, pairs, rng.randint(2 - len(shapes), 6 - len(shapes)),
                      lambda c, s: (c, s) != (colour, shape))
    rng.shuffle(shapes)
    return shapes, None, {}, f"is there a {colour} {shape} ?", answer


def _text_question(rng: random.Random, pairs: Sequence[tuple[str, str]]) -> Made:
    text = _random_text(rng)
    shapes = _others(rng, pairs, rng.randint(2, 6))
    return shapes, text, {}, f"what {text[0]} is written ?", text[1]


_MAKERS = {"colour": _colour_question, "shape": _shape_question, "count": _count_question,
           "relation": _relation_question, "exists": _exists_question, "text": _text_question}


Asked = tuple[str, str] | None  # (question, answer), or None when the scene cannot answer the kind


def _shapes_of(objects: Sequence[Item]) -> list[Item]:
    return [o for o in objects if o.shape != "text"]


def _ask_colour(rng: random.Random, objects: Sequence[Item], pairs: Sequence[tuple[str, str]]) -> Asked:
    """An object singled out by its shape, or by shape and size when its shape appears once per size."""
    shapes = _shapes_of(objects)
    options = []
    for o in shapes:
        same = [p for p in shapes if p.shape == o.shape and p is not o]
        if not same:
            options.append((f"what colour is the {o.shape} ?", o.colour))
        elif all(p.size != o.size for p in same) and len(same) == 1:
            options.append((f"what colour is the {o.size} {o.shape} ?", o.colour))
    return rng.choice(options) if options else None


def _ask_shape(rng: random.Random, objects: Sequence[Item], pairs: Sequence[tuple[str, str]]) -> Asked:
    o = rng.choice(_shapes_of(objects))
    return f"what shape is at the {o.position} ?", o.shape


def _ask_count(rng: random.Random, objects: Sequence[Item], pairs: Sequence[tuple[str, str]]) -> Asked:
    shape = rng.choice(SHAPES)
    return f"how many {PLURALS[shape]} are there ?", str(sum(o.shape == shape for o in objects))


def _ask_relation(rng: random.Random, objects: Sequence[Item], pairs: Sequence[tuple[str, str]]) -> Asked:
    """Two objects whose colour-shape pairs are unique in the scene, on a relation whose axis separates them."""
    shapes = _shapes_of(objects)
    unique = [o for o in shapes if sum((p.colour, p.shape) == (o.colour, o.shape) for p in shapes) == 1]
    options = [(a, b, r) for a in unique for b in unique if a is not b for r in RELATIONS
               if (a.col != b.col if r in ("left of", "right of") else a.row != b.row)]
    if not options:
        return None
    a, b, relation = rng.choice(options)
    holds = {"left of": a.col < b.col, "right of": a.col > b.col, "above": a.row < b.row,
             "below": a.row > b.row}[relation]
    return f"is the {a.colour} {a.shape} {relation} the {b.colour} {b.shape} ?", "yes" if holds else "no"


def _ask_exists(rng: random.Random, objects: Sequence[Item], pairs: Sequence[tuple[str, str]]) -> Asked:
    """Half the time a pair in the scene, else one absent from it."""
    present = sorted({(o.colour, o.shape) for o in _shapes_of(objects)})
    absent = [p for p in pairs if p not in present]
    colour, shape = rng.choice(present if rng.random() < 0.5 or not absent else absent)
    return f"is there a {colour} {shape} ?", "yes" if (colour, shape) in present else "no"


def _ask_text(rng: random.Random, objects: Sequence[Item], pairs: Sequence[tuple[str, str]]) -> Asked:
    texts = [o.text for o in objects if o.shape == "text"]
    if not texts:
        return None
    kind = "number" if texts[0].isdigit() else "word"
    return f"what {kind} is written ?", texts[0]


_ASK_ABOUT = {"colour": _ask_colour, "shape": _ask_shape, "count": _ask_count, "relation": _ask_relation,
              "exists": _ask_exists, "text": _ask_text}


def _others(rng: random.Random, pairs: Sequence[tuple[str, str]], count: int, allowed=None) -> list[Spec]:
    """``count`` random shapes whose (colour, shape) satisfies ``allowed``."""
    choices = [p for p in pairs if allowed is None or allowed(*p)]
    return [(*rng.choice(choices), rng.choice(SIZES)) for _ in range(count)]


def _random_text(rng: random.Random) -> tuple[str, str]:
    """("word", a word of WORDS) or ("number", a digit "0".."9"), each half the time."""
    if rng.random() < 0.5:
        return "word", rng.choice(WORDS)
    return "number", str(rng.randrange(10))


@cache
def _pairs(split: str) -> tuple[tuple[str, str], ...]:
    """The colour-shape pairs a split draws from, in a fixed order (every pair but HELD_OUT in "train")."""
    every = [(c, s) for c in COLOURS for s in SHAPES]
    return tuple(p for p in every if split != "train" or p not in HELD_OUT)


# ---------------------------------------------------------------------------------------------- drawing


def _layout(rng: random.Random, size: int, shapes: list[Spec], text: tuple[str, str] | None,
            cells: dict[int, int] | None = None) -> tuple[Item, ...]:
    """Place shapes (``cells`` pins some by index) and the text in distinct cells, jittered inside them."""
    cells = dict(cells or {})
    free = [c for c in range(GRID * GRID) if c not in cells.values()]
    rng.shuffle(free)
    for i in range(len(shapes)):
        if i not in cells:
            cells[i] = free.pop()
    side = size / GRID
    items = []
    for i, (colour, shape, scale) in enumerate(shapes):
        row, col = divmod(cells[i], GRID)
        radius = _RADIUS[scale] * side
        slack = side / 2 - radius - 1
        cx = (col + 0.5) * side + rng.uniform(-slack, slack)
        cy = (row + 0.5) * side + rng.uniform(-slack, slack)
        box = (math.floor(cx - radius), math.floor(cy - radius), math.ceil(cx + radius), math.ceil(cy + radius))
        items.append(Item(shape, colour, scale, row, col, (cx, cy), box, radius))
    if text is not None:
        row, col = divmod(free.pop(), GRID)
        font = _font(size)
        left, top, right, bottom = font.getbbox(text[1])
        slack_x = max(0.0, (side - (right - left)) / 2 - 2)
        slack_y = max(0.0, (side - (bottom - top)) / 2 - 2)
        x0 = round(col * side + side / 2 - (right - left) / 2 + rng.uniform(-slack_x, slack_x)) - left
        y0 = round(row * side + side / 2 - (bottom - top) / 2 + rng.uniform(-slack_y, slack_y)) - top
        box = (x0 + left, y0 + top, x0 + right - 1, y0 + bottom - 1)
        items.append(Item("text", "white", "", row, col, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), box,
                          text=text[1]))
    return tuple(items)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font, about 0.42 of a cell high (28 px at 224 px: two 14 px patches)."""
    return ImageFont.load_default(size=max(8, round(_TEXT_SIZE * size / GRID)))


def _draw(size: int, items: tuple[Item, ...]) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for item in items:
        if item.shape == "text":
            left, top, _, _ = _font(size).getbbox(item.text)
            draw.text((item.box[0] - left, item.box[1] - top), item.text, fill=TEXT_COLOUR, font=_font(size))
        else:
            _draw_shape(draw, item)
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, item: Item) -> None:
    cx, cy = item.centre
    r = item.radius
    fill = COLOURS[item.colour]
    if item.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif item.shape == "square":
        h = 0.82 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif item.shape == "triangle":  # equilateral, pointing up, centroid at the centre
        draw.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in _angles(3, -90)], fill=fill)
    elif item.shape == "star":  # five points, inner radius 0.45 of the outer
        points = [(cx + (r if i % 2 == 0 else 0.45 * r) * math.cos(a), cy + (r if i % 2 == 0 else 0.45 * r)
                   * math.sin(a)) for i, a in enumerate(_angles(10, -90))]
        draw.polygon(points, fill=fill)
    else:  # cross: a plus sign with arms 0.6 r wide
        w = 0.3 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)


def _angles(count: int, start: float) -> list[float]:
    return [math.radians(start + 360 * i / count) for i in range(count)]


# ---------------------------------------------------------------------------------------------- checks


def _check_int(name: str, value: object, minimum: int | None = None) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_split(split: object) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _check_kinds(kinds: Sequence[str], allowed: Sequence[str] = KINDS, what: str = "question") -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = (kinds,)
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError(f"kinds is empty; pass some of {', '.join(allowed)}")
    unknown = [k for k in kinds if k not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} kind {unknown[0]!r}; use some of {', '.join(allowed)}")
    return kinds
