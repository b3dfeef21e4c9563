"""Checks every registered tokenizer goes through, then grid- and patch-specific checks against
brute-force and scikit-learn references."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.metrics import pairwise_distances_argmin

import vistok
import vistok.weights
from vistok.metrics import psnr
from vistok.samples import sample_images
from vistok.tokenizers.base import cell_layout
from vistok.tokenizers.grid import GridTokenizer
from vistok.tokenizers.patch import PatchTokenizer

ALL = vistok.list_tokenizers()


def photo(width: int, height: int) -> Image.Image:
    """A real photo resized to any size (bundled sample, so no randomness in what is tokenized)."""
    return Image.open(sample_images()[0]).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


# -- every tokenizer in the registry ---------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [(1, 1), (5, 700), (700, 5), (451, 300), (512, 512), (2000, 1500)])
def test_count_matches_encode(name, size, load_any):
    tok = load_any(name)
    tokens = tok.encode(photo(*size))
    if vistok.tokenizer_info(name).countable:
        assert len(tokens) == tok.count(*size)
    else:  # region tokens: how many depends on what is found, and count() says so instead of guessing
        with pytest.raises(ValueError, match="depends on the image content"):
            tok.count(*size)
    assert tokens.image_size == size
    assert tokens.meta["tokenizer"] == name
    assert tokens.is_hard == (vistok.tokenizer_info(name).kind == "hard")


@pytest.mark.parametrize("name", ALL)
def test_count_needs_no_weights(name, monkeypatch, load_any):
    def refuse(*args, **kwargs):
        raise AssertionError("count() must not read weights")

    # the modules that import read_weights by name first: one imported while vistok.weights is patched would
    # keep `refuse` for the rest of the session
    for module in ("vistok.tokenizers.grid", "vistok.tokenizers.patch", "vistok.learned.train"):
        monkeypatch.setattr(f"{module}.read_weights", refuse)
    monkeypatch.setattr(vistok.weights, "read_weights", refuse)
    tok = load_any(name)
    if vistok.tokenizer_info(name).countable:
        assert tok.count(640, 480) > 0
    else:
        with pytest.raises(ValueError, match="depends on the image content"):
            tok.count(640, 480)


@pytest.mark.parametrize("name", ALL)
def test_encode_is_deterministic_and_round_trips_through_a_file(name, tmp_path, load_any):
    tok = load_any(name)
    path = sample_images()[1]
    a, b = tok.encode(path), tok.encode(path)
    assert a.equals(b)
    a.save(tmp_path / "t.safetensors")
    assert vistok.Tokens.load(tmp_path / "t.safetensors").equals(a)
    described = tok.describe()
    assert described["name"] == name and described["kind"] == vistok.tokenizer_info(name).kind


@pytest.mark.parametrize("name", ALL)
def test_decode_gives_the_working_size_and_resembles_the_image(name, load_any):
    tok = load_any(name)
    path = sample_images()[2]
    tokens = tok.encode(path)
    assert tok.decodable == vistok.tokenizer_info(name).decodable
    if not tok.decodable:  # a clear refusal, never a made-up picture
        with pytest.raises((NotImplementedError, ValueError), match="decode"):
            tok.decode(tokens)
        with pytest.raises((NotImplementedError, ValueError), match="decode"):
            tok.decode([tokens])
        return
    image = tok.decode(tokens)
    assert image.size == tuple(tokens.meta["working_size"])
    reference = Image.fromarray((tok.prepare(path)[0] * 255).round().astype(np.uint8))
    assert psnr(reference, image) > 15.0  # a recognisable picture, not noise (noise scores ~8 dB)


@pytest.mark.parametrize("name", vistok.list_tokenizers(decodable=True))
def test_decode_takes_a_list_as_encode_does(name, load_any):
    tok = load_any(name)
    paths = sample_images()[:3]
    batch = tok.encode(paths)
    images = tok.decode(batch)
    assert isinstance(images, list) and len(images) == 3
    for image, tokens in zip(images, batch):
        single = tok.decode(tokens)
        assert isinstance(single, Image.Image) and image.size == single.size == tuple(tokens.meta["working_size"])
        assert np.array_equal(np.asarray(image), np.asarray(single))
    assert tok.decode(tuple(batch[:1]))[0].size == images[0].size and tok.decode([]) == []
    with pytest.raises(TypeError, match=f"{name} decodes vistok.Tokens or a list of them, got str"):
        tok.decode(["not tokens"])
    with pytest.raises(TypeError, match="got ndarray"):
        tok.decode(batch[0].values)


@pytest.mark.parametrize("name", ALL)
def test_declared_capabilities_hold(name, load_any):
    """What the registry entry declares is what the instance offers, and nothing is offered undeclared."""
    from vistok.preprocess import Preprocess

    info = vistok.tokenizer_info(name)
    tok = load_any(name)
    assert tok.kind == info.kind
    assert tok.decodable == info.decodable and tok.name == name
    assert isinstance(tok.preprocess_config, Preprocess) if info.preprocessing else not hasattr(tok, "preprocess_config")
    assert callable(tok.zero_shot) if info.zero_shot else not hasattr(tok, "zero_shot")
    if info.decodable:  # vistok show compares the decode with the image as the tokenizer prepared it
        pixels, original = tok.prepare(sample_images()[0])
        assert pixels.ndim == 3 and pixels.shape[2] == 3 and len(original) == 2
    if info.argument is not None:
        assert info.argument in info.config_fields()
        assert getattr(vistok.load(f"{name}:{info.config_fields()[info.argument]}").config, info.argument) == \
            info.config_fields()[info.argument]
    for key, value in info.fixed.items():
        assert key not in info.config_fields() and getattr(tok.config, key) == value
        with pytest.raises(TypeError, match=f"fixes {key}="):
            vistok.load(name, **{key: value})


@pytest.mark.parametrize("name", ALL)
def test_bad_inputs(name, tmp_path, load_any):
    tok = load_any(name)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(vistok.ImageError, match="notes.jpg"):
        tok.encode(bad)
    for size in [(0, 10), (10, -1)]:
        with pytest.raises(ValueError, match="positive"):
            tok.count(*size)
    with pytest.raises(ValueError):
        tok.count(10.5, 10)


@pytest.mark.parametrize("name", ALL)
def test_list_input_gives_list_output(name, load_any):
    tok = load_any(name)
    paths = sample_images()[:3]
    batch = tok.encode(paths)
    assert isinstance(batch, list) and len(batch) == 3
    # soft tokens of one image may differ in the last bits between batch sizes (kernel choice)
    tol = {} if tok.kind == "hard" else {"rtol": 1e-4, "atol": 1e-4}
    assert all(t.equals(tok.encode(p), **tol) for t, p in zip(batch, paths))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.sampled_from([4, 8, 16, 32]),
       st.one_of(st.none(), st.integers(32, 1024)))
def test_cell_layout_properties(width, height, cell, max_side):
    w, h = cell_layout(width, height, cell, max_side)
    assert w % cell == 0 and h % cell == 0 and w >= cell and h >= cell
    if max_side is not None:
        assert max(w, h) <= max(cell, max_side // cell * cell)
    else:
        assert abs(w - width) <= cell / 2 + 1e-9 or w == cell
    assert cell_layout(width, height, cell, max_side) == (w, h)


@pytest.mark.parametrize(
    ("size", "cell", "max_side", "expected"),
    [((512, 512), 16, 256, (256, 256)), ((640, 427), 16, 256, (256, 176)), ((1, 1), 16, 256, (16, 16)),
     ((10000, 10), 16, 256, (256, 16)), ((100, 50), 16, None, (96, 48)), ((100, 50), 16, 256, (96, 48))],
)
def test_cell_layout_values(size, cell, max_side, expected):
    assert cell_layout(*size, cell, max_side) == expected


# -- grid -------------------------------------------------------------------------------------------

def test_grid_ids_are_the_nearest_codewords():
    tok = vistok.load("grid")
    pixels, _ = tok.prepare(sample_images()[3])
    cells, grid = tok.cells(pixels)
    tokens = tok.encode(sample_images()[3])
    assert tokens.grid == grid
    reference = pairwise_distances_argmin(cells, tok.codebook)
    # float32 ties can flip an argmin; the chosen word must then be exactly as close
    d = ((cells[:, None, :] - tok.codebook[None]) ** 2).sum(-1)
    chosen, best = d[np.arange(len(cells)), tokens.values], d[np.arange(len(cells)), reference]
    assert np.mean(tokens.values == reference) > 0.99
    np.testing.assert_allclose(chosen, best, rtol=1e-4, atol=1e-4)
    assert tokens.values.min() >= 0 and tokens.values.max() < tok.vocab_size == 1024


def test_grid_batch_of_mixed_sizes_matches_images_one_by_one():
    """A list is encoded with one codebook matmul over every image's cells; each image's ids and layout must be
    what encoding it alone gives, and those the nearest codewords (scikit-learn)."""
    tok = vistok.load("grid")
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for w, h in [(16, 16), (300, 40), (64, 64), (17, 250), (5, 5)]] + sample_images()[:2]
    batch = tok.encode(images)
    alone = [tok.encode(image) for image in images]
    layouts = [cell_layout(*Image.open(i).size if isinstance(i, Path) else i.size, 16, 256) for i in images]
    assert [t.grid for t in batch] == [t.grid for t in alone] == [(h // 16, w // 16) for w, h in layouts]
    assert [t.grid for t in batch][:5] == [(1, 1), (2, 16), (4, 4), (16, 1), (1, 1)]
    assert all(a.equals(b) for a, b in zip(batch, alone))
    cells = np.concatenate([tok.cells(tok.prepare(image)[0])[0] for image in images])
    ids = np.concatenate([t.values for t in batch])
    assert np.mean(ids == pairwise_distances_argmin(cells, tok.codebook)) > 0.99


def test_grid_cells_are_row_major():
    tok = GridTokenizer(vistok.tokenizers.grid.GridConfig(cell=2, max_side=None))
    pixels = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    cells, grid = tok.cells(pixels)
    assert grid == (2, 3)
    # cell (row 0, col 1) holds pixels rows 0-1, cols 2-3
    np.testing.assert_array_equal(cells[1].reshape(2, 2, 3), pixels[0:2, 2:4])
    np.testing.assert_array_equal(tok.uncells(cells, grid), pixels)


def test_grid_decode_pastes_codewords():
    tok = vistok.load("grid")
    tokens = tok.encode(sample_images()[0])
    decoded = np.asarray(tok.decode(tokens), np.float32) / 255
    cells, _ = tok.cells(decoded)
    np.testing.assert_allclose(cells, tok.codebook[tokens.values], atol=0.5 / 255 + 1e-6)


def test_grid_fit_saves_and_reloads(tmp_path):
    images = [photo(96, 64), photo(64, 96)]
    fitted = GridTokenizer.fit(images, cell=8, vocab=12, max_side=64, seed=3)
    assert fitted.codebook.shape == (12, 8 * 8 * 3)
    assert fitted.codebook.min() >= 0 and fitted.codebook.max() <= 1
    again = GridTokenizer.fit(images, cell=8, vocab=12, max_side=64, seed=3)
    np.testing.assert_array_equal(fitted.codebook, again.codebook)
    fitted.save_weights(tmp_path / "cb.safetensors", sources=["a", "b"])
    loaded = vistok.load("grid", cell=8, max_side=64, codebook=str(tmp_path / "cb.safetensors"))
    np.testing.assert_array_equal(loaded.encode(images[0]).values, fitted.encode(images[0]).values)
    assert loaded.vocab_size == 12


def test_grid_fit_and_codebook_errors(tmp_path):
    with pytest.raises(ValueError, match="at least vocab=5000"):
        GridTokenizer.fit([photo(32, 32)], cell=8, vocab=5000, max_side=32)
    with pytest.raises(ValueError, match="fit-codebook IMAGES --cells 8"):
        vistok.load("grid", cell=8).encode(photo(64, 64))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vistok.load("grid", codebook=str(tmp_path / "missing.safetensors")).encode(photo(64, 64))
    PatchTokenizer.fit([photo(256, 256)] * 2, patch=4, max_side=64).save_weights(tmp_path / "pca.safetensors")
    with pytest.raises(ValueError, match="holds patch-pca weights, expected 'grid-codebook'"):
        vistok.load("grid", codebook=str(tmp_path / "pca.safetensors")).encode(photo(64, 64))


def test_grid_decode_rejects_foreign_tokens():
    tok = vistok.load("grid")
    with pytest.raises(ValueError, match="hard tokens"):
        tok.decode(vistok.load("patch").encode(photo(64, 64)))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 1024\)"):
        tok.decode(vistok.Tokens.from_grid(np.array([0, 5000]), (1, 2)))


# -- patch ------------------------------------------------------------------------------------------

def test_patch_all_components_reconstruct_exactly():
    tok = vistok.load("patch")
    for path in sample_images():
        pixels, _ = tok.prepare(path)
        original = (pixels * 255).round().astype(np.uint8)
        decoded = np.asarray(tok.decode(tok.encode(Image.fromarray(original))))
        np.testing.assert_array_equal(decoded, original)


def test_patch_error_grows_as_fewer_components_are_kept():
    path = sample_images()[5]  # rocket: held out from the fit of the bundled PCA
    reference = Image.fromarray((vistok.load("patch").prepare(path)[0] * 255).round().astype(np.uint8))
    scores = []
    for dim in (768, 256, 64, 16, 4, 1):
        tok = vistok.load("patch", dim=dim)
        scores.append(psnr(reference, tok.decode(tok.encode(reference))))
    assert scores[0] == float("inf")
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert scores[-1] > 10  # even one component (the mean colour direction) keeps something


def test_patch_tokens_equal_a_brute_force_projection():
    tok = vistok.load("patch", dim=32)
    image = photo(200, 120)
    tokens = tok.encode(image)
    pixels, _ = tok.prepare(image)
    mean, components = tok.pca
    rows, cols = tokens.grid
    for r in range(rows):
        for c in range(cols):
            patch = pixels[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].reshape(-1).astype(np.float64)
            expected = (patch - mean) @ components.T.astype(np.float64)
            np.testing.assert_allclose(tokens.values[r * cols + c], expected, atol=1e-4)


def test_patch_components_are_orthonormal():
    mean, components = vistok.load("patch").pca
    assert components.shape == (768, 768) and mean.shape == (768,)
    np.testing.assert_allclose(components @ components.T, np.eye(768), atol=1e-4)


def test_patch_fit_matches_sklearn_pca(tmp_path):
    from sklearn.decomposition import PCA

    images = [photo(64, 64), photo(48, 80)]
    fitted = PatchTokenizer.fit(images, patch=4, max_side=64, scales=(1.0,))
    sample = fitted.sample_cells(images, (1.0,))
    reference = PCA(n_components=48, svd_solver="full").fit(sample.astype(np.float64))
    mean, components = fitted.pca
    np.testing.assert_allclose(mean, reference.mean_, atol=1e-6)
    # components are defined up to sign
    signs = np.sign((components * reference.components_).sum(1))
    np.testing.assert_allclose(components * signs[:, None], reference.components_, atol=1e-3)
    fitted.save_weights(tmp_path / "p.safetensors")
    loaded = vistok.load("patch", patch=4, max_side=64, weights=str(tmp_path / "p.safetensors"))
    np.testing.assert_array_equal(loaded.encode(images[1]).values, fitted.encode(images[1]).values)


def test_patch_option_errors():
    with pytest.raises(ValueError, match="dim=0 must lie in 1..768"):
        vistok.load("patch", dim=0).encode(photo(32, 32))
    with pytest.raises(ValueError, match="fit-patch IMAGES --patch 8"):
        vistok.load("patch", patch=8).encode(photo(32, 32))
    with pytest.raises(ValueError, match="dim=768"):
        vistok.load("patch").decode(vistok.load("patch", dim=8).encode(photo(32, 32)))
    with pytest.raises(ValueError, match="more than 768 patches"):
        PatchTokenizer.fit([photo(32, 32)], patch=16, max_side=32)
