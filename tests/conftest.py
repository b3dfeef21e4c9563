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
    """``load_any(name)``: the registered tokenizer, with a tiny model where it needs one."""

    def load(name: str):
        return vistok.load(name, **tokenizer_options.get(name, {}))

    return load
