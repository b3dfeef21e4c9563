"""vistok.vlm.shapes: seeded scenes and questions, checked against the scene's objects by brute force."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from vistok.vlm import shapes
from vistok.vlm.shapes import HELD_OUT, KINDS, Question, questions, scene, vocabulary


@pytest.fixture(scope="module")
def test_600() -> list[Question]:
    return list(questions(600, seed=7, split="test"))


def _image_hash(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


# ------------------------------------------------------------------------------------ determinism and splits


def test_same_seed_same_bytes_and_text():
    first = list(questions(12, seed=3, split="val"))
    second = list(questions(12, seed=3, split="val"))
    assert [(q.question, q.answer, q.kind, q.split) for q in first] == [
        (q.question, q.answer, q.kind, q.split) for q in second]
    assert [q.image.tobytes() for q in first] == [q.image.tobytes() for q in second]
    assert [q.objects for q in first] == [q.objects for q in second]
    other = list(questions(12, seed=4, split="val"))
    assert [q.question for q in other] != [q.question for q in first]


def test_pinned_questions_of_seed_0():
    """The stream is part of the API (a trained model depends on it): these texts must not drift."""
    got = [(q.kind, q.question, q.answer) for q in questions(6, seed=0, split="train")]
    assert got == PINNED_TRAIN_SEED_0


PINNED_TRAIN_SEED_0 = [
    ("colour", "what colour is the small circle ?", "red"),
    ("shape", "what shape is at the top middle ?", "cross"),
    ("count", "how many circles are there ?", "3"),
    ("relation", "is the cyan circle above the cyan square ?", "yes"),
    ("exists", "is there a yellow cross ?", "no"),
    ("text", "what word is written ?", "cup"),
]


def test_images_are_rgb_of_the_requested_size():
    for q in questions(6, seed=1, size=448):
        assert q.image.mode == "RGB" and q.image.size == (448, 448)


def test_kinds_cycle_in_the_given_order():
    assert [q.kind for q in questions(12)] == list(KINDS) * 2
    assert [q.kind for q in questions(4, kinds=("text", "count"))] == ["text", "count"] * 2
    assert [q.kind for q in questions(3, kinds="exists")] == ["exists"] * 3


def test_splits_are_disjoint_streams():
    by_split = {s: list(questions(300, seed=0, split=s)) for s in ("train", "val", "test")}
    hashes = {s: {_image_hash(q.image) for q in qs} for s, qs in by_split.items()}
    assert len(hashes["train"]) == 300
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    assert all(q.split == s for s, qs in by_split.items() for q in qs)


def test_held_out_pairs_never_in_train_and_present_in_test():
    assert HELD_OUT == {("red", "triangle"), ("blue", "star"), ("green", "cross")}
    named = {pair: re.compile(rf"\b{pair[0]} {pair[1]}\b") for pair in HELD_OUT}
    train = list(questions(2000, seed=0, split="train"))
    assert not [o for q in train for o in q.objects if (o.colour, o.shape) in HELD_OUT]
    assert not [q.question for q in train if any(p.search(q.question) for p in named.values())]
    scenes = [scene(s, split="train")[1] for s in range(300)]
    assert not [o for items in scenes for o in items if (o.colour, o.shape) in HELD_OUT]

    test = list(questions(2000, seed=0, split="test"))
    drawn = Counter((o.colour, o.shape) for q in test for o in q.objects)
    for pair, pattern in named.items():
        assert drawn[pair] >= 100, pair
        asked = [q for q in test if pattern.search(q.question)]
        assert len(asked) >= 10 and {"yes", "no"} <= {q.answer for q in asked}, pair
    # a question whose answer is a held-out colour for its shape: "what colour is the triangle ?" -> "red"
    assert {(q.answer, q.question.split()[-2]) for q in test if q.kind == "colour"} >= HELD_OUT


# ------------------------------------------------------------------------------------ vocabulary and balance


def test_vocabulary_covers_every_question_and_answer(test_600):
    words = vocabulary()
    assert words == sorted(set(words)) == vocabulary()
    assert all(w == w.lower() and w.split() == [w] for w in words)
    assert {"yes", "no", "?", "red", "circles", "0", "9", "cat"} <= set(words)
    vocab = set(words)
    train = list(questions(300, seed=1, split="train", size=64))
    for q in test_600 + train:
        assert set(q.question.split()) <= vocab, q.question
        assert q.answer in vocab and q.answer.split() == [q.answer], q.answer


def test_answers_balanced_per_kind(test_600):
    answers = {k: Counter(q.answer for q in test_600 if q.kind == k) for k in KINDS}
    assert all(sum(a.values()) == 100 for a in answers.values())
    for kind in ("relation", "exists"):
        assert set(answers[kind]) == {"yes", "no"}
        assert 35 <= answers[kind]["yes"] <= 65, (kind, answers[kind])
    expected = {"count": [str(i) for i in range(7)], "colour": list(shapes.COLOURS), "shape": list(shapes.SHAPES)}
    for kind, values in expected.items():
        assert set(answers[kind]) == set(values), kind
        share = 100 / len(values)
        assert all(0.4 * share <= answers[kind][v] <= 1.8 * share for v in values), (kind, answers[kind])
    numbers = sum(n for a, n in answers["text"].items() if a.isdigit())
    assert 35 <= numbers <= 65
    assert set(answers["text"]) - {str(i) for i in range(10)} <= set(shapes.WORDS)


# ------------------------------------------------------------------------------------ brute-force answers


def _matching(objects, colour=None, shape=None, size=None):
    return [o for o in objects if o.shape != "text" and (colour is None or o.colour == colour)
            and (shape is None or o.shape == shape) and (size is None or o.size == size)]


def _brute_force(q: Question) -> str:
    """The answer recomputed from the question's words and the scene's objects, independently of the maker."""
    words = q.question.split()
    assert words[-1] == "?"
    objects = q.objects
    plural = {v: k for k, v in shapes.PLURALS.items()}
    if q.kind == "colour":  # what colour is the [size] shape ?
        size = words[4] if len(words) == 7 else None
        (target,) = _matching(objects, shape=words[-2], size=size)
        return target.colour
    if q.kind == "shape":  # what shape is at the <position> ?
        position = " ".join(words[5:-1])
        (target,) = [o for o in objects if shapes.POSITIONS[3 * o.row + o.col] == position]
        assert target.shape != "text"
        return target.shape
    if q.kind == "count":  # how many <plural> are there ?
        return str(len(_matching(objects, shape=plural[words[2]])))
    if q.kind == "relation":  # is the c s <relation> the c s ?
        (a,) = _matching(objects, colour=words[2], shape=words[3])
        (b,) = _matching(objects, colour=words[-3], shape=words[-2])
        relation = " ".join(words[4:-4])
        (ax, ay), (bx, by) = a.centre, b.centre
        holds = {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]
        differ = a.col != b.col if "of" in relation else a.row != b.row
        assert differ, "relation asked about objects in one column/row"
        return "yes" if holds else "no"
    if q.kind == "exists":  # is there a c s ?
        return "yes" if _matching(objects, colour=words[3], shape=words[4]) else "no"
    (text,) = [o for o in objects if o.shape == "text"]
    assert (words[1] == "number") == text.text.isdigit()
    return text.text


@pytest.mark.parametrize("split", ["train", "test"])
def test_answers_agree_with_the_objects(split, test_600):
    qs = test_600 if split == "test" else list(questions(600, seed=7, split="train"))
    for q in qs:
        assert _brute_force(q) == q.answer, (q.question, q.answer, q.objects)


def test_objects_are_drawn_where_described(test_600):
    side = 224 / 3
    for q in test_600[:120]:
        pixels = np.asarray(q.image)
        cells = [(o.row, o.col) for o in q.objects]
        assert len(cells) == len(set(cells)), "two objects share a cell"
        assert 2 <= len(_matching(q.objects)) <= 6
        for o in q.objects:
            left, top, right, bottom = o.box
            # inside its own cell, so objects never overlap
            assert o.col * side - 1 <= left and right <= (o.col + 1) * side + 1, o
            assert o.row * side - 1 <= top and bottom <= (o.row + 1) * side + 1, o
            if o.shape != "text":
                x, y = (round(v) for v in o.centre)
                assert tuple(pixels[y, x]) == shapes.COLOURS[o.colour], o
        ink = pixels != np.array(shapes.BACKGROUND, dtype=np.uint8)
        drawn = np.zeros(ink.shape[:2], bool)
        for o in q.objects:
            left, top, right, bottom = o.box
            drawn[max(top, 0):bottom + 1, max(left, 0):right + 1] = True
        assert not (ink.any(axis=2) & ~drawn).any(), "ink outside every object's box"


def test_large_shapes_are_larger_than_small_ones(test_600):
    area = {(shape, size): [] for shape in shapes.SHAPES for size in shapes.SIZES}
    for q in test_600[:120]:
        pixels = np.asarray(q.image).astype(int)
        for o in _matching(q.objects):
            left, top, right, bottom = o.box
            crop = pixels[max(top, 0):bottom + 1, max(left, 0):right + 1]
            area[o.shape, o.size].append(int((np.abs(crop - shapes.COLOURS[o.colour]).sum(axis=2) == 0).sum()))
    for shape in shapes.SHAPES:  # radii 0.42 and 0.24 of a cell: about 3 times the area
        assert min(area[shape, "large"]) > 2.5 * max(area[shape, "small"]) > 0, shape


def test_text_is_rendered_readably(test_600):
    """The answer's own glyphs, drawn alone with Pillow's default font, are exactly the pixels in the box."""
    texts = [q for q in test_600 if q.kind == "text"]
    font = ImageFont.load_default(size=round(0.42 * 224 / 3))
    for q in texts:
        (item,) = [o for o in q.objects if o.shape == "text"]
        assert item.text == q.answer and item.colour == "white"
        left, top, right, bottom = item.box
        assert bottom - top + 1 >= 14, "text shorter than one 14 px patch"
        crop = np.asarray(q.image)[top:bottom + 1, left:right + 1]
        assert (crop == 255).all(axis=2).sum() >= 30
        alone = Image.new("RGB", (224, 224), shapes.BACKGROUND)
        glyph_left, glyph_top, _, _ = font.getbbox(q.answer)
        ImageDraw.Draw(alone).text((left - glyph_left, top - glyph_top), q.answer, fill=(255, 255, 255), font=font)
        assert np.array_equal(np.asarray(alone)[top:bottom + 1, left:right + 1], crop), q.answer
        wrong = "cat" if q.answer != "cat" else "dog"
        other = Image.new("RGB", (224, 224), shapes.BACKGROUND)
        ImageDraw.Draw(other).text((left, top), wrong, fill=(255, 255, 255), font=font)
        assert not np.array_equal(np.asarray(other)[top:bottom + 1, left:right + 1], crop)


def test_scene_is_deterministic_and_described():
    image, objects = scene(5)
    again, same = scene(5)
    assert image.tobytes() == again.tobytes() and objects == same
    assert image.size == (224, 224)
    counts = [len(_matching(scene(s, 96)[1])) for s in range(40)]
    assert min(counts) == 2 and max(counts) == 6
    texts = sum(any(o.shape == "text" for o in scene(s, 96)[1]) for s in range(40))
    assert 8 <= texts <= 32
    assert scene(5, split="test")[0].tobytes() != image.tobytes()


# ------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"n": -1}, ValueError, "n must be at least 0, got -1"),
    ({"n": 2.5}, TypeError, "n must be an int, got float"),
    ({"n": 3, "split": "training"}, ValueError, "unknown split 'training'; use one of train, val, test"),
    ({"n": 3, "kinds": ("color",)}, ValueError, "unknown question kind 'color'; use some of colour, shape"),
    ({"n": 3, "kinds": ()}, ValueError, "kinds is empty"),
    ({"n": 3, "size": 16}, ValueError, "size must be at least 48, got 16"),
    ({"n": 3, "seed": "a"}, TypeError, "seed must be an int, got str"),
])
def test_bad_inputs_raise_at_the_call(kwargs, error, message):
    n = kwargs.pop("n")
    with pytest.raises(error, match=re.escape(message)):
        questions(n, **kwargs)  # raised before iteration starts


def test_bad_scene_inputs():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        scene(0, split="dev")
    with pytest.raises(ValueError, match="size must be at least 48"):
        scene(0, size=8)


def test_zero_questions_and_numpy_seeds():
    assert list(questions(0)) == []
    assert [q.question for q in questions(3, seed=np.int64(2))] == [q.question for q in questions(3, seed=2)]


def test_question_sets_start_with_questions_and_agree_with_the_objects():
    from collections import Counter

    from vistok.vlm.shapes import question_sets

    sets = list(question_sets(300, seed=3, split="train"))
    assert [s[0].question for s in sets] == [q.question for q in questions(300, seed=3, split="train")]
    sizes = Counter(len(s) for s in sets)
    assert max(sizes) == 6 and min(sizes) >= 2 and sizes[6] > 100
    for group in sets:
        assert len({q.kind for q in group}) == len(group)  # one question per kind
        assert all(q.image is group[0].image for q in group)  # one image, encoded once
        for q in group:
            assert q.answer == _brute_force(q), q
            assert set(q.question.split()) <= set(vocabulary())
            for colour, shape in HELD_OUT:  # never named in train, as in questions()
                assert f"{colour} {shape}" not in q.question
    assert [len(s) for s in question_sets(5, seed=3, per_image=2)] == [2] * 5
    assert list(question_sets(4, seed=1, split="val", per_image=1))[2][0].question == \
        list(questions(4, seed=1, split="val"))[2].question
    with pytest.raises(ValueError, match="per_image must be at least 1"):
        question_sets(3, per_image=0)


def test_describe_lists_every_object_in_reading_order():
    from vistok.vlm.shapes import describe, question_sets

    for group in question_sets(40, seed=5, split="test", describe=True):
        caption = group[-1]
        assert (caption.kind, caption.question) == ("describe", "describe the image ?")
        parts = caption.answer.split(" , ")
        objects = sorted(caption.objects, key=lambda o: (o.row, o.col))
        assert len(parts) == len(objects)
        for part, o in zip(parts, objects):
            words = part.split()
            assert " ".join(words[-len(o.position.split()):]) == o.position
            if o.shape == "text":
                assert words[:2] == ["number" if o.text.isdigit() else "word", o.text]
            else:
                assert words[:3] == [o.size, o.colour, o.shape]
        assert set(caption.answer.split()) <= set(vocabulary())
    assert describe(()) == ""
