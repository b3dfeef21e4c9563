"""Shared fixtures: the options that make every registered tokenizer loadable offline in the tests."""

from __future__ import annotations

import pytest

import vistok


@pytest.fixture(scope="session")
def tokenizer_options(tmp_path_factory):
    """``name -> load options`` for tokenizers that ship no weights (or whose registry-wide checks should run
    on a different checkpoint type): tiny random checkpoints built here. A new tokenizer that needs a model
    fails the registry-wide tests until it gets an entry."""
    from tiny_models import tiny_dinov2_folder, tiny_hf_folder, tiny_vae_folder
    from vistok.weights import bundled

    root = tmp_path_factory.mktemp("registry-models")
    return {
        "clip": {"model": str(tiny_hf_folder(root / "clip", "clip"))},
        "siglip": {"model": str(tiny_hf_folder(root / "siglip", "siglip"))},
        # DINOv2 with registers: the generic checks then cover register tokens; focus-vit-s14 covers DINOv2
        "vit": {"model": str(tiny_dinov2_folder(root / "dinov2-reg", registers=2))},
        # a tiny AutoencoderKL trained for a few seconds on the samples, so that its decodes resemble them
        "sd-vae": {"model": str(tiny_vae_folder(root / "sd-vae"))},
        # a trained model by path: the shipped fsq-natural64 file
        "learned": {"path": str(bundled("fsq-natural64.safetensors"))},
    }


@pytest.fixture
def load_any(tokenizer_options):
    """``load_any(name, **options)``: the registered tokenizer, with a tiny model where it needs one."""

    def load(name: str, **options):
        return vistok.load(name, **{**tokenizer_options.get(name, {}), **options})

    return load


# Tests that take more than about 3 s on 2 cores (`pytest --durations=60`), marked `slow` here by node id (fnmatch
# patterns) so that the files stay as their owners wrote them; `make test-fast` runs `pytest -m "not slow"`.
# A test can also carry `@pytest.mark.slow` itself.
SLOW_TESTS = (
    "tests/test_cli.py::test_demo_writes_everything",
    "tests/test_cli.py::test_classify_*",
    "tests/test_learned.py::test_fsq_fmnist_meets_its_goals_on_the_fashion_mnist_test_set",
    "tests/test_learned.py::test_cli_train_resume_and_eval_recon",
    "tests/test_regions_yolo_torchvision.py::test_torchvision_*",
    "tests/test_regions_yolo_torchvision.py::test_nudenet_*",
    "tests/test_regions_faces_superpixels.py::test_superpixels_*",
    "tests/test_regions_faces_superpixels.py::test_huge_image_*",
    "tests/test_regions_faces_superpixels.py::test_haar_*",
    "tests/test_regions_faces_superpixels.py::test_lbp_*",
    "tests/test_tokenizers.py::test_grid_ids_are_the_nearest_codewords",
    "tests/test_tokenizers.py::test_list_input_gives_list_output*",
    "tests/test_budget_*.py::*end_to_end*",
    "tests/test_budget_mllama.py::test_tiles_match_image_processor",
    "tests/test_reduce.py::test_cli_reduce_and_reducers",
    "tests/test_vit.py::test_conversion_is_cached_*",
    "tests/test_vit.py::test_default_tokens_are_block_9_*",
    "tests/test_vit.py::test_onnxruntime_backend_matches_torch_*",
    "tests/test_vit.py::test_last_layer_attention_and_saliency_*",
    "tests/test_vit.py::test_cli_tokenize_and_show",
    "tests/test_vit.py::test_other_working_sizes_*",
    "tests/test_images.py::test_draft_size_jpeg_and_png",
    "tests/test_images.py::test_no_leaked_file_handles",
    "tests/test_sd_vae.py::test_decode_resembles_the_image",
    "tests/test_preprocess.py::test_12mp_jpeg_matches_slow_processor",
    "tests/test_packaging.py::test_wheel_*",
)


def pytest_collection_modifyitems(config, items):
    """Mark the tests named in SLOW_TESTS as slow."""
    import fnmatch

    for item in items:
        if any(fnmatch.fnmatchcase(item.nodeid, pattern) for pattern in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def deadline():
    """Fail instead of hanging: reading a FIFO waits for a writer forever."""
    import signal

    def expire(*_: object) -> None:
        raise TimeoutError("vistok blocked on an input (a FIFO?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
