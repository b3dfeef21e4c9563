"""vistok.vlm.video: seeded clips checked against their pixels, PyAV round trips, and video token arithmetic."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vistok.vlm import shapes
from vistok.vlm.shapes import COLOURS, HELD_OUT
from vistok.vlm.video import DIRECTIONS, VIDEO_KINDS, Clip, clips, read_frames, video_token_cost, vocabulary, write_clip

needs_av = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV (the video extra) is missing")
SIDE = 224 / 3


@pytest.fixture(scope="module")
def test_300() -> list[Clip]:
    return list(clips(300, seed=5, split="test"))


def _clip_hash(clip: Clip) -> str:
    return hashlib.sha256(b"".join(f.tobytes() for f in clip.frames)).hexdigest()


def _colour_mask(frame: Image.Image, colour: str, tolerance: int = 0) -> np.ndarray:
    """Pixels of ``colour``, each channel within ``tolerance`` (decoded video is off by a level or two)."""
    difference = np.abs(np.asarray(frame, dtype=np.int16) - np.array(COLOURS[colour], dtype=np.int16))
    return (difference <= tolerance).all(axis=2)


def _mae(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


# ------------------------------------------------------------------------------------ determinism and splits


def test_same_seed_same_frames_and_text():
    first, second = list(clips(6, seed=3, split="val")), list(clips(6, seed=3, split="val"))
    assert [(c.question, c.answer, c.kind) for c in first] == [(c.question, c.answer, c.kind) for c in second]
    assert [_clip_hash(c) for c in first] == [_clip_hash(c) for c in second]
    assert [c.tracks for c in first] == [c.tracks for c in second]
    other = list(clips(6, seed=4, split="val"))
    assert [_clip_hash(c) for c in other] != [_clip_hash(c) for c in first]


def test_frames_are_rgb_of_the_requested_size_and_count():
    for clip in clips(3, seed=1, frames=5, size=96):
        assert len(clip.frames) == 5 and all(f.mode == "RGB" and f.size == (96, 96) for f in clip.frames)
        assert all(len(t.centres) == len(t.visible) == 5 for t in clip.tracks)


def test_kinds_cycle_in_the_given_order():
    assert [c.kind for c in clips(6)] == list(VIDEO_KINDS) * 2
    assert [c.kind for c in clips(3, kinds="frames")] == ["frames"] * 3


def test_splits_are_disjoint_streams():
    by_split = {s: list(clips(60, seed=0, split=s, frames=3, size=48)) for s in ("train", "val", "test")}
    hashes = {s: {_clip_hash(c) for c in cs} for s, cs in by_split.items()}
    assert len(hashes["train"]) == 60
    assert not hashes["train"] & hashes["val"] and not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]
    assert all(c.split == s for s, cs in by_split.items() for c in cs)


def test_held_out_pairs_never_in_train_and_present_in_test(test_300):
    train = list(clips(600, seed=0, split="train", frames=2, size=48))
    assert not [t for c in train for t in c.tracks if (t.colour, t.shape) in HELD_OUT]
    named = [re.compile(rf"\b{c} {s}\b") for c, s in HELD_OUT]
    assert not [c.question for c in train if any(p.search(c.question) for p in named)]
    drawn = Counter((t.colour, t.shape) for c in test_300 for t in c.tracks)
    assert all(drawn[pair] >= 5 for pair in HELD_OUT), drawn
    assert any(p.search(c.question) for c in test_300 for p in named)


# ------------------------------------------------------------------------------------ vocabulary and balance


def test_vocabulary_covers_every_question_and_answer(test_300):
    words = vocabulary()
    assert words == sorted(set(words))
    assert set(shapes.vocabulary()) <= set(words)
    assert {"which", "way", "did", "move", "frames", "show", "appear", "up", "down"} <= set(words)
    assert all(w.split() == [w] for w in words)
    for clip in test_300:
        assert set(clip.question.split()) <= set(words), clip.question
        assert clip.answer in words and clip.answer.split() == [clip.answer]


def test_answers_cover_every_value_roughly_uniformly(test_300):
    answers = {k: Counter(c.answer for c in test_300 if c.kind == k) for k in VIDEO_KINDS}
    assert set(answers["direction"]) == set(DIRECTIONS)
    assert all(12 <= n <= 40 for n in answers["direction"].values()), answers["direction"]  # 25 expected
    assert set(answers["frames"]) == {str(i) for i in range(9)}
    assert all(4 <= n <= 22 for n in answers["frames"].values()), answers["frames"]  # 11.1 expected
    assert set(answers["appear"]) == {"yes", "no"} and 35 <= answers["appear"]["yes"] <= 65


# ------------------------------------------------------------------------------------ answers from pixels


def _lane_centroids(clip: Clip, track, tolerance: int = 0) -> list[float]:
    """Centroid, along the motion axis, of the track's colour inside its lane, per frame, from pixels."""
    horizontal = track.motion in ("left", "right")
    across = track.centres[0][1] if horizontal else track.centres[0][0]
    lane = int(across // SIDE)
    out = []
    for frame in clip.frames:
        mask = _colour_mask(frame, track.colour, tolerance)
        band = mask[round(lane * SIDE):round((lane + 1) * SIDE)] if horizontal else \
            mask[:, round(lane * SIDE):round((lane + 1) * SIDE)]
        ys, xs = np.nonzero(band)
        assert len(xs) > 20
        out.append(float(xs.mean() if horizontal else ys.mean()))
    return out


def test_direction_answer_matches_the_pixels(test_300):
    checked = 0
    for clip in test_300:
        if clip.kind != "direction":
            continue
        words = clip.question.split()
        target = clip.tracks[clip.target]
        assert (target.colour, target.shape) == (words[4], words[5])
        assert [(t.colour, t.shape) for t in clip.tracks].count((target.colour, target.shape)) == 1
        assert 2 <= len(clip.tracks) <= 4 and target.motion == clip.answer
        along = _lane_centroids(clip, target)
        moved = along[-1] - along[0]
        assert abs(moved) > 30, moved  # at least 0.4 of a cell at 224 px
        sign = 1 if clip.answer in ("right", "down") else -1
        assert moved * sign > 0, (clip.question, clip.answer, along)
        steps = np.diff(along)
        assert np.ptp(steps) < 2.0, steps  # steady: the same step every frame, up to pixel rounding
        checked += 1
    assert checked == 100


def test_frames_count_matches_metadata_and_pixels(test_300):
    for clip in [c for c in test_300 if c.kind == "frames"]:
        shape = clip.question.split()[-2]
        (target,) = [t for t in clip.tracks if t.shape == shape]
        assert target is clip.tracks[clip.target]
        assert sum(target.visible) == int(clip.answer)
        assert sum(any(o.shape == shape for o in clip.objects(i)) for i in range(len(clip.frames))) == int(clip.answer)
    for clip in [c for c in test_300 if c.kind == "frames"][:12]:  # the shape's own pixels, frame by frame
        target = clip.tracks[clip.target]
        shown = 0
        for i, frame in enumerate(clip.frames):
            left, top, right, bottom = target.item(i, 224).box
            region = _colour_mask(frame, target.colour)[max(top, 0):bottom + 1, max(left, 0):right + 1]
            shown += int(region.sum() > 0.3 * (right - left) * (bottom - top))
            assert region.sum() == 0 or target.visible[i]
        assert shown == int(clip.answer), (clip.question, clip.answer)


def test_appear_answer_matches_visibility(test_300):
    for clip in [c for c in test_300 if c.kind == "appear"]:
        shape = clip.question.split()[-3]
        named = [t for t in clip.tracks if t.shape == shape]
        assert len(named) <= 1
        appears = bool(named) and not named[0].visible[0] and any(named[0].visible)
        assert clip.answer == ("yes" if appears else "no")
        if named:
            assert clip.tracks[clip.target] is named[0]
            first = _colour_mask(clip.frames[0], named[0].colour)
            cx, cy = (round(v) for v in named[0].centres[0])
            assert first[cy, cx] == named[0].visible[0]
        else:
            assert clip.target == -1


def test_objects_drawn_where_described_without_overlap(test_300):
    for clip in test_300[:60]:
        for i, frame in enumerate(clip.frames):
            pixels = np.asarray(frame)
            objects = clip.objects(i)
            drawn = np.zeros(pixels.shape[:2], bool)
            for o in objects:
                left, top, right, bottom = o.box
                assert 0 <= left and right <= 224 and 0 <= top and bottom <= 224, o
                assert not drawn[top:bottom + 1, left:right + 1].any(), "two objects overlap"
                drawn[top:bottom + 1, left:right + 1] = True
                x, y = (round(v) for v in o.centre)
                assert tuple(pixels[y, x]) == COLOURS[o.colour], o
            ink = (pixels != np.array(shapes.BACKGROUND, dtype=np.uint8)).any(axis=2)
            assert not (ink & ~drawn).any(), "ink outside every object's box"


# ------------------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"n": -1}, ValueError, "n must be at least 0"),
    ({"n": 2.5}, TypeError, "n must be an int"),
    ({"n": 1, "frames": 1}, ValueError, "frames must be at least 2"),
    ({"n": 1, "frames": 100}, ValueError, "frames must be at most 99"),
    ({"n": 1, "size": 20}, ValueError, "size must be at least 48"),
    ({"n": 1, "split": "dev"}, ValueError, "unknown split 'dev'"),
    ({"n": 1, "kinds": ("direction", "colour")}, ValueError, "unknown video question kind 'colour'"),
    ({"n": 1, "kinds": ()}, ValueError, "kinds is empty"),
])
def test_bad_arguments_raise_one_line(kwargs, error, words):
    with pytest.raises(error) as caught:
        clips(**kwargs)
    assert words in str(caught.value) and "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------ video files


@pytest.fixture(scope="module")
def moving() -> Clip:
    return next(iter(clips(1, seed=2, split="val", kinds="direction")))


@needs_av
def test_write_then_read_round_trip(moving, tmp_path):
    import av

    path = write_clip(moving.frames, tmp_path / "clip.mp4", fps=1)
    assert path == tmp_path / "clip.mp4" and path.stat().st_size > 1000
    with av.open(str(path)) as container:  # a real H.264 video file
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.video[0].frames in (0, 8)
    back = read_frames(path)
    assert len(back) == 8 and all(f.mode == "RGB" and f.size == (224, 224) for f in back)
    errors = [_mae(a, b) for a, b in zip(moving.frames, back)]
    assert max(errors) < 1.0, errors  # on 0..255: colours survive
    # the decoded frames still answer the question: the target's centroid moves the right way
    decoded = Clip(tuple(back), moving.question, moving.answer, moving.kind, moving.split, moving.tracks,
                   moving.target)
    assert [round(v) for v in _lane_centroids(decoded, moving.tracks[moving.target], tolerance=4)] == \
        [round(v) for v in _lane_centroids(moving, moving.tracks[moving.target])]


@needs_av
def test_write_accepts_arrays_and_odd_sizes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (33, 47, 3), dtype=np.uint8) for _ in range(3)]
    back = read_frames(write_clip(arrays, tmp_path / "sub" / "noise.mkv", fps=2.5))
    assert len(back) == 3 and back[0].size == (47, 33)
    assert max(_mae(Image.fromarray(a), b) for a, b in zip(arrays, back)) < 1.0


@needs_av
@pytest.mark.parametrize(("fps", "expected"), [
    (1, [0, 4]), (2, [0, 2, 4, 6]), (1.5, [0, 2, 5]), (4, list(range(8))), (8, [i // 2 for i in range(16)]),
    (0.4, [0]),
])
def test_read_samples_by_timestamp(moving, tmp_path, fps, expected):
    """8 frames at 4 frames/s last 2 s; sampling at ``fps`` takes the frame on screen at 0, 1/fps, ..."""
    path = write_clip(moving.frames, tmp_path / "clip4.mp4", fps=4)
    sampled = read_frames(path, fps=fps)
    which = [int(np.argmin([_mae(s, f) for f in moving.frames])) for s in sampled]
    assert which == expected
    assert all(min(_mae(s, f) for f in moving.frames) < 1.0 for s in sampled)


@needs_av
def test_video_file_errors_are_one_line(moving, tmp_path):
    def one_line(error, call, *words):
        with pytest.raises(error) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and all(w in message for w in words), message

    missing = tmp_path / "nope.mp4"
    one_line(FileNotFoundError, lambda: read_frames(missing), str(missing), "no such video file")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video at all\n" * 100)
    one_line(ValueError, lambda: read_frames(junk), str(junk), "not a video")
    one_line(ValueError, lambda: read_frames(tmp_path), "is a folder")
    out = tmp_path / "x.mp4"
    one_line(ValueError, lambda: write_clip([], out), str(out), "no frames")
    one_line(ValueError, lambda: write_clip([moving.frames[0], moving.frames[0].resize((100, 100))], out),
             "frame 1 is 100x100 but frame 0 is 224x224")
    one_line(TypeError, lambda: write_clip(["frame.png"], out), "frame 0 is a str")
    one_line(ValueError, lambda: write_clip(moving.frames, out, fps=0), "fps must be a positive")
    one_line(ValueError, lambda: read_frames(junk, fps=-1), "fps must be a positive")
    bad_suffix = tmp_path / "clip.notavideoformat"
    one_line(ValueError, lambda: write_clip(moving.frames, bad_suffix), str(bad_suffix), ".mp4")
    assert not bad_suffix.exists() and not out.exists()


# ------------------------------------------------------------------------------------ cost arithmetic


def test_an_hour_at_one_frame_per_second():
    cost = video_token_cost("llava-1.5-7b")  # 3600 s at 1 frame/s, 2 tokens per frame, 1280x720 frames
    assert cost["frames"] == 3600
    assert cost["tokens"] == 7200
    assert cost["model_tokens_per_frame"] == 576  # (336 / 14) ** 2 whatever the frame size
    assert cost["model_tokens"] == 2_073_600
    assert cost["ratio"] == 288.0
    assert cost["fits"] is None and cost["model_fits"] is None


def test_cost_follows_the_models_own_count():
    # Qwen2-VL resizes 1280x720 to multiples of 28: 1288x728 -> 46 x 26 merged tokens = 1196 per frame
    qwen = video_token_cost("qwen2-vl-7b", seconds=60, fps=2)
    assert (qwen["frames"], qwen["tokens"], qwen["model_tokens_per_frame"]) == (120, 240, 1196)
    assert qwen["model_tokens"] == 143_520 and qwen["ratio"] == 598.0
    pali = video_token_cost("paligemma", tokens_per_frame=4)  # 224 px, (224 / 14) ** 2 = 256 per frame
    assert (pali["tokens"], pali["model_tokens"], pali["ratio"]) == (14_400, 921_600, 64.0)
    assert video_token_cost(seconds=2.5)["frames"] == 3  # samples at 0, 1 and 2 s
    assert video_token_cost(seconds=0.3, fps=10)["frames"] == 3  # not 4 from 0.3 * 10 = 3.0000000000000004
    fits = video_token_cost(seconds=60, context_length=4096)
    assert (fits["tokens"], fits["fits"], fits["model_tokens"], fits["model_fits"]) == (120, True, 34_560, False)


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"seconds": -1}, ValueError, "seconds must be a positive number"),
    ({"fps": 0}, ValueError, "fps must be a positive number"),
    ({"seconds": "1h"}, TypeError, "seconds must be a number"),
    ({"tokens_per_frame": 0}, ValueError, "tokens_per_frame must be at least 1"),
    ({"model": "no-such-vlm"}, ValueError, "unknown model 'no-such-vlm'"),
    ({"frame_size": (0, 720)}, ValueError, "width must be positive"),
    ({"context_length": 0}, ValueError, "context_length must be at least 1"),
])
def test_cost_bad_inputs_raise_one_line(kwargs, error, words):
    with pytest.raises(error) as caught:
        video_token_cost(**kwargs)
    assert words in str(caught.value) and "\n" not in str(caught.value)


@needs_av
def test_audio_only_file_has_no_video_stream(tmp_path):
    import av

    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(800) / 5) * 8000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(ValueError, match="has no video stream") as caught:
        read_frames(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_pyav_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    for call in (lambda: read_frames(tmp_path / "a.mp4"), lambda: write_clip([], tmp_path / "a.mp4")):
        with pytest.raises(ImportError, match=r"needs PyAV: pip install 'vistok\[video\]'"):
            call()
