"""Procedural video clips of moving shapes with temporal questions, real video files, and what video costs.

``clips(n, seed=0, split="train", frames=8)`` yields :class:`Clip` items: a tuple of Pillow frames drawn
exactly like the scenes of :mod:`vistok.vlm.shapes` (same shapes, colours, sizes and canvas), one question and
its one-word answer. Question kinds (:data:`VIDEO_KINDS`), answers drawn uniformly:

==========  ========================================  ==============================================
kind        example                                   answers
==========  ========================================  ==============================================
direction   which way did the red circle move ?       left / right / up / down (the named object is
                                                      unique; the others stay still or move too)
frames      how many frames show a square ?           "0" .. str(frames) (one such shape, shown in a
                                                      random subset of the frames)
appear      did a star appear ?                       yes (absent at first, then shown) / no (never
                                                      shown, shown throughout, or shown then gone)
==========  ========================================  ==============================================

Layout: the canvas is the same 3 x 3 grid, read as three lanes along one axis per clip (rows when things move
left or right, columns when they move up or down). A moving shape has a lane to itself and moves steadily,
by the same step each frame, from one cell of it to another; still shapes sit in distinct cells of the other
lanes, so nothing ever overlaps. Each clip's random generator is seeded from ``(split, seed, index)``; the
pairs of :data:`vistok.vlm.shapes.HELD_OUT` are never drawn or named in ``"train"``.

``write_clip(frames, "clip.mp4", fps=1)`` writes a real H.264 file with PyAV (lossless 4:4:4, so colours
survive exactly enough for the pixel checks) and ``read_frames("clip.mp4", fps=1)`` decodes it back, sampling
one frame per second by timestamp when asked. :func:`video_token_cost` does the arithmetic of LLaMA-VID (Li,
Wang and Jia, "LLaMA-VID: An Image is Worth 2 Tokens in Large Language Models", ECCV 2024): an hour at
1 frame/s is 3,600 frames, 7,200 tokens at 2 tokens per frame, against the model's own tokens per frame.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistok.vlm import shapes
from vistok.vlm.shapes import GRID, MIN_SIZE, SHAPES, SIZES, Item, _check_int, _check_split, _draw, _pairs

__all__ = ["VIDEO_KINDS", "DIRECTIONS", "MAX_FRAMES", "Clip", "Track", "clips", "vocabulary", "write_clip",
           "read_frames", "video_token_cost"]

VIDEO_KINDS: tuple[str, ...] = ("direction", "frames", "appear")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
#: The most frames a clip may have: "frames" answers are the numbers of :func:`vistok.vlm.shapes.vocabulary`.
MAX_FRAMES = 99
_AXIS = {"left": ("x", -1), "right": ("x", 1), "up": ("y", -1), "down": ("y", 1)}
_RADIUS = {"small": 0.24, "large": 0.42}  # as in shapes: radius as a fraction of the cell side
_CELL_MOVES = ((0, 2), (0, 1), (1, 2))  # (from, to) cells of a lane, in the positive direction


@dataclass(frozen=True)
class Track:
    """One shape through a clip: ``centres[i]`` is its centre (pixels) in frame ``i``, drawn where
    ``visible[i]``; ``motion`` is ``"still"`` or the direction it moves (one of :data:`DIRECTIONS`)."""

    colour: str
    shape: str
    size: str
    radius: float
    motion: str
    centres: tuple[tuple[float, float], ...]
    visible: tuple[bool, ...]

    def item(self, frame: int, size: int) -> Item:
        """The :class:`vistok.vlm.shapes.Item` drawn in ``frame`` (cell from its centre) of a ``size`` canvas."""
        cx, cy = self.centres[frame]
        side = size / GRID
        row, col = (min(GRID - 1, max(0, int(v // side))) for v in (cy, cx))
        box = (math.floor(cx - self.radius), math.floor(cy - self.radius), math.ceil(cx + self.radius),
               math.ceil(cy + self.radius))
        return Item(self.shape, self.colour, self.size, row, col, (cx, cy), box, self.radius)


@dataclass(frozen=True)
class Clip:
    """Frames of moving shapes with one question and its one-word answer; ``tracks`` describe the motion and
    ``target`` indexes the track the question names (-1 when the named shape is not in the clip)."""

    frames: tuple[Image.Image, ...] = field(repr=False)
    question: str
    answer: str
    kind: str
    split: str
    tracks: tuple[Track, ...] = field(default=(), repr=False, compare=False)
    target: int = -1

    def objects(self, frame: int) -> tuple[Item, ...]:
        """The shapes drawn in frame ``frame``."""
        size = self.frames[frame].width
        return tuple(t.item(frame, size) for t in self.tracks if t.visible[frame])


def vocabulary() -> list[str]:
    """:func:`vistok.vlm.shapes.vocabulary` plus the words of video questions, sorted: one word-level
    tokenizer serves image and video questions."""
    words = set(shapes.vocabulary())
    words.update({"which", "way", "did", "move", "how", "many", "frames", "show", "a", "appear", "yes", "no"})
    words.update(DIRECTIONS)
    return sorted(words)


def clips(n: int, *, seed: int = 0, split: str = "train", frames: int = 8, size: int = 224,
          kinds: Sequence[str] = VIDEO_KINDS) -> Iterator[Clip]:
    """Yield ``n`` clips of ``split`` with ``frames`` frames of ``size`` x ``size`` pixels each.

    Deterministic in ``(seed, split, index)``; kinds cycle in the order of ``kinds``. Raises ``ValueError`` on
    a negative ``n``, fewer than 2 or more than 99 frames, a size under 48 pixels, an unknown split or kind,
    and ``TypeError`` on a non-integer count.
    """
    n = _check_int("n", n, minimum=0)
    seed = _check_int("seed", seed)
    _check_split(split)
    frames = _check_int("frames", frames, minimum=2)
    if frames > MAX_FRAMES:
        raise ValueError(f"frames must be at most {MAX_FRAMES} (answers are the numbers 0..99), got {frames}")
    size = _check_int("size", size, minimum=MIN_SIZE)
    kinds = _check_kinds(kinds)
    return _generate(n, seed, split, frames, size, kinds)


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    return shapes._check_kinds(kinds, VIDEO_KINDS, "video question")


# ---------------------------------------------------------------------------------------------- questions

# A shape before layout: (colour, shape, size, motion, visible per frame).
Spec = tuple[str, str, str, str, tuple[bool, ...]]
Made = tuple[list[Spec], str, str, int]  # specs, question, answer, index of the named spec (-1: none)


def _generate(n: int, seed: int, split: str, frames: int, size: int, kinds: tuple[str, ...]) -> Iterator[Clip]:
    pairs = _pairs(split)
    for index in range(n):
        kind = kinds[index % len(kinds)]
        rng = random.Random(f"vistok.vlm.video/{split}/{seed}/{index}")
        specs, question, answer, target = _MAKERS[kind](rng, pairs, frames)
        tracks = _layout(rng, size, frames, specs)
        images = tuple(_draw(size, tuple(t.item(i, size) for t in tracks if t.visible[i])) for i in range(frames))
        yield Clip(images, question, answer, kind, split, tracks, target)


def _direction_question(rng: random.Random, pairs: Sequence[tuple[str, str]], frames: int) -> Made:
    direction = rng.choice(DIRECTIONS)
    colour, shape = rng.choice(pairs)
    always = (True,) * frames
    specs: list[Spec] = [(colour, shape, rng.choice(SIZES), direction, always)]
    others = _others(rng, pairs, rng.randint(1, 3), lambda c, s: (c, s) != (colour, shape))
    motions = _motions(rng, _AXIS[direction][0], len(others), movers=1)
    specs += [(c, s, z, m, always) for (c, s, z), m in zip(others, motions)]
    return specs, f"which way did the {colour} {shape} move ?", direction, 0


def _frames_question(rng: random.Random, pairs: Sequence[tuple[str, str]], frames: int) -> Made:
    shape = rng.choice(SHAPES)
    count = rng.randint(0, frames)
    shown = set(rng.sample(range(frames), count))
    colour = rng.choice([c for c, s in pairs if s == shape])
    specs = [(colour, shape, rng.choice(SIZES), tuple(i in shown for i in range(frames)))]
    specs += [(*o, (True,) * frames) for o in _others(rng, pairs, rng.randint(1, 3), lambda c, s: s != shape)]
    rng.shuffle(specs)
    motions = _motions(rng, rng.choice("xy"), len(specs))
    target = next(i for i, s in enumerate(specs) if s[1] == shape)
    return [(c, s, z, m, v) for (c, s, z, v), m in zip(specs, motions)], \
        f"how many frames show a {shape} ?", str(count), target


def _appear_question(rng: random.Random, pairs: Sequence[tuple[str, str]], frames: int) -> Made:
    shape = rng.choice(SHAPES)
    answer = rng.choice(("yes", "no"))
    start = rng.randint(1, frames - 1)
    case = "appears" if answer == "yes" else rng.choice(("never", "throughout", "disappears"))
    specs: list[tuple[str, str, str, tuple[bool, ...]]] = []
    if case != "never":
        visible = tuple(case == "throughout" or (i >= start) == (case == "appears") for i in range(frames))
        specs.append((rng.choice([c for c, s in pairs if s == shape]), shape, rng.choice(SIZES), visible))
    for colour, other, scale in _others(rng, pairs, rng.randint(1, 3), lambda c, s: s != shape):
        visible = (True,) * frames
        if rng.random() < 0.25:  # another shape comes or goes, so a change alone does not give the answer
            cut, comes = rng.randint(1, frames - 1), rng.random() < 0.5
            visible = tuple((i >= cut) == comes for i in range(frames))
        specs.append((colour, other, scale, visible))
    rng.shuffle(specs)
    motions = _motions(rng, rng.choice("xy"), len(specs))
    target = next((i for i, s in enumerate(specs) if s[1] == shape), -1)
    return [(c, s, z, m, v) for (c, s, z, v), m in zip(specs, motions)], f"did a {shape} appear ?", answer, target


_MAKERS = {"direction": _direction_question, "frames": _frames_question, "appear": _appear_question}


def _others(rng: random.Random, pairs: Sequence[tuple[str, str]], count: int, allowed) -> list[tuple[str, str, str]]:
    choices = [p for p in pairs if allowed(*p)]
    return [(*rng.choice(choices), rng.choice(SIZES)) for _ in range(count)]


def _motions(rng: random.Random, axis: str, count: int, movers: int = 0) -> list[str]:
    """Motions for ``count`` more shapes when ``movers`` already have lanes: still, or either way along
    ``axis``, keeping every mover in a lane of its own and room for the still shapes in the other lanes."""
    ways = [d for d in DIRECTIONS if _AXIS[d][0] == axis]
    out = []
    for left in range(count, 0, -1):
        stills = sum(m == "still" for m in out)
        fits = movers + 1 <= GRID and stills + left - 1 <= GRID * (GRID - movers - 1)
        if fits and rng.random() < 0.5:
            out.append(rng.choice(ways))
            movers += 1
        else:
            out.append("still")
    return out


# ---------------------------------------------------------------------------------------------- layout


def _layout(rng: random.Random, size: int, frames: int, specs: list[Spec]) -> tuple[Track, ...]:
    """Lanes along the clip's axis: one per moving shape, still shapes in distinct cells of the rest."""
    axis = next((_AXIS[m][0] for *_, m, _ in specs if m != "still"), rng.choice("xy"))
    side = size / GRID
    lanes = list(range(GRID))
    rng.shuffle(lanes)
    movers = [i for i, s in enumerate(specs) if s[3] != "still"]
    free = [(lane, cell) for lane in lanes[len(movers):] for cell in range(GRID)]
    rng.shuffle(free)
    lane_of = dict(zip(movers, lanes))
    tracks = []
    for i, (colour, shape, scale, motion, visible) in enumerate(specs):
        radius = _RADIUS[scale] * side
        slack = side / 2 - radius - 1
        if motion == "still":
            lane, cell = free.pop()
            along = [(cell + 0.5) * side + rng.uniform(-slack, slack)] * frames
        else:
            lane = lane_of[i]
            first, last = rng.choice(_CELL_MOVES)
            if _AXIS[motion][1] < 0:
                first, last = GRID - 1 - first, GRID - 1 - last
            a = (first + 0.5) * side + rng.uniform(-slack, slack)
            b = (last + 0.5) * side + rng.uniform(-slack, slack)
            along = [a + (b - a) * t / (frames - 1) for t in range(frames)]
        across = (lane + 0.5) * side + rng.uniform(-slack, slack)
        centres = tuple((x, across) if axis == "x" else (across, x) for x in along)
        tracks.append(Track(colour, shape, scale, radius, motion, centres, visible))
    return tuple(tracks)


# ---------------------------------------------------------------------------------------------- video files

_CODEC, _PIX_FMT, _CODEC_OPTIONS = "libx264", "yuv444p", {"crf": "0"}  # lossless H.264, full-resolution colour


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise ImportError("reading and writing video needs PyAV: pip install 'vistok[video]'") from None
    return av


def write_clip(frames: Iterable[Image.Image | np.ndarray], path: str | Path, fps: float = 1) -> Path:
    """Write ``frames`` (Pillow images or ``(H, W, 3)`` uint8 arrays, all one size) to the video file ``path``
    at ``fps`` frames per second, as lossless H.264 (4:4:4) via PyAV; the container follows the suffix
    (``.mp4``, ``.mkv``, ``.mov``). Creates missing parent folders. Returns the path."""
    av = _av()
    rate = _check_fps(fps)
    path = Path(path)
    images = [_as_rgb(frame, i) for i, frame in enumerate(frames)]
    if not images:
        raise ValueError(f"no frames to write to {path}; pass at least one image")
    width, height = images[0].size
    for i, image in enumerate(images):
        if image.size != (width, height):
            raise ValueError(f"frame {i} is {image.width}x{image.height} but frame 0 is {width}x{height}; "
                             "resize the frames to one size before writing")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with av.open(str(path), "w") as container:
            stream = container.add_stream(_CODEC, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, _PIX_FMT
            stream.options = dict(_CODEC_OPTIONS)
            for image in images:
                container.mux(stream.encode(av.VideoFrame.from_image(image)))
            container.mux(stream.encode())
    except (av.error.FFmpegError, ValueError) as error:
        path.unlink(missing_ok=True)
        raise ValueError(f"could not write {path} as H.264 video ({error}); use a .mp4, .mkv or .mov path") \
            from None
    return path


def read_frames(path: str | Path, *, fps: float | None = None) -> list[Image.Image]:
    """Decode the video file ``path`` into RGB Pillow frames, in presentation order.

    With ``fps``, sample by timestamp instead: at times ``0, 1/fps, 2/fps, ...`` before the video ends, the
    frame on screen at that time (the last one starting at or before it), so ``fps=1`` gives one frame per
    second. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file PyAV cannot decode,
    one without a video stream or without frames.
    """
    av = _av()
    rate = None if fps is None else _check_fps(fps)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video file; check the path")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass a video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path} has no video stream; pass a video file such as one from write_clip")
            stream = container.streams.video[0]
            frames = _decode(container.decode(stream), stream, rate)
    except av.error.FFmpegError as error:
        raise ValueError(f"{path} is not a video PyAV can read ({type(error).__name__}); pass a video file "
                         "such as one from write_clip") from None
    if not frames:
        raise ValueError(f"{path} holds no video frames; write some with write_clip")
    return frames


def _decode(decoded: Iterator[Any], stream: Any, rate: Fraction | None) -> list[Image.Image]:
    """Every frame, or (``rate`` given) the frame on screen at each sample time ``k / rate``, streaming."""
    if rate is None:
        return [frame.to_image() for frame in decoded]
    guess = stream.average_rate or stream.guessed_rate
    step = 1 / float(guess) if guess else 0.0  # how long the last frame stays on screen
    eps = 1e-6
    out: list[Image.Image] = []
    k, start = 0, None
    held: tuple[float, Any] | None = None  # (time, frame) of the latest frame, converted when first sampled
    for index, frame in enumerate(decoded):
        time = frame.time if frame.time is not None else index * step
        start = time if start is None else start
        time -= start
        while held is not None and k / rate < time - eps:  # the held frame is on screen at time k / rate
            out.append(_image_of(held))
            held = (held[0], out[-1])
            k += 1
        held = (time, frame)
    if held is not None:
        end = held[0] + step
        while k / rate < end - eps or (k / rate <= held[0] + eps):
            out.append(_image_of(held))
            held = (held[0], out[-1])
            k += 1
    return out


def _image_of(held: tuple[float, Any]) -> Image.Image:
    frame = held[1]
    return frame if isinstance(frame, Image.Image) else frame.to_image()


def _as_rgb(frame: object, index: int) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame.convert("RGB")
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
        return Image.fromarray(frame, "RGB")
    raise TypeError(f"frame {index} is a {type(frame).__name__}; pass Pillow images or (H, W, 3) uint8 arrays")


def _check_fps(fps: object) -> Fraction:
    if not isinstance(fps, numbers.Real) or isinstance(fps, bool):
        raise TypeError(f"fps must be a number of frames per second, got {type(fps).__name__}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number of frames per second, got {fps}")
    return Fraction(fps).limit_denominator(1001)


# ---------------------------------------------------------------------------------------------- cost


def video_token_cost(model: str = "llava-1.5-7b", *, seconds: float = 3600, fps: float = 1,
                     tokens_per_frame: int = 2, frame_size: tuple[int, int] = (1280, 720),
                     context_length: int | None = None) -> dict[str, Any]:
    """Visual tokens for ``seconds`` of video sampled at ``fps``: ``tokens_per_frame`` per frame (LLaMA-VID's
    1 context + 1 content token) against ``model``'s own tokens for one ``frame_size`` frame
    (:func:`vistok.count`).

    Frames are the sample times ``0, 1/fps, ...`` before ``seconds`` (an hour at 1 frame/s: 3,600). With
    ``context_length`` (the LM's window in tokens; the model table holds none) the result says whether each
    fits; otherwise ``fits`` and ``model_fits`` are ``None``. Raises ``ValueError`` on an unknown model or a
    non-positive duration, rate, token count or size.
    """
    from vistok.budget import count

    for name, value in (("seconds", seconds), ("fps", fps)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value}")
    per_frame = _check_int("tokens_per_frame", tokens_per_frame, minimum=1)
    if context_length is not None:
        context_length = _check_int("context_length", context_length, minimum=1)
    if not isinstance(model, str):
        raise TypeError(f"model must be a model name, got {type(model).__name__}")
    try:
        counted = count(frame_size, model=model)
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    frames = math.ceil(round(float(seconds) * float(fps), 9))
    tokens, full = frames * per_frame, frames * counted.image_tokens
    return {
        "model": counted.model, "seconds": seconds, "fps": fps, "frames": frames,
        "frame_size": counted.image_size, "tokens_per_frame": per_frame, "tokens": tokens,
        "model_tokens_per_frame": counted.image_tokens, "model_tokens": full, "ratio": full / tokens,
        "context_length": context_length,
        "fits": None if context_length is None else tokens <= context_length,
        "model_fits": None if context_length is None else full <= context_length,
    }
