"""Model names the table does not hold verbatim: a fallback never crosses a variant that changes the count."""

import re

import pytest

from vistok.budget import count, list_models, resolve_model
from vistok.budget.models import model_table
from vistok.budget.names import count_key, name_words

MODELS = list_models()
# Decorations a user adds to a checkpoint name that never change its preprocessing.
DECORATIONS = ["-awq", "-AWQ", "-GPTQ-Int4", "-hf", "-GGUF", "-4bit", "-bnb-4bit", "-fp16", "_bf16", "-instruct",
               "-mlx", "-2025-01-01", "-20250101", "-q4_k_m", "-finetuned-on-cats", ":latest"]


def _forms(model):
    entry = resolve_model(model)
    return sorted({form for alias in (model, *entry.aliases) for form in (alias, alias.rsplit("/", 1)[-1])})


def _spellings(alias):
    """Ways to write ``alias`` that keep every word that could change the count."""
    yield alias.upper()
    yield alias.replace("-", "_")
    yield "someone/" + alias.rsplit("/", 1)[-1]
    for suffix in DECORATIONS:
        yield alias + suffix


def _shortened(alias):
    """``alias`` with one word that holds a digit dropped (``paligemma-3b-448`` -> ``paligemma-448``)."""
    parts = alias.rsplit("/", 1)[-1].split("-")
    for i, part in enumerate(parts):
        if i and re.search(r"\d", part):
            yield "-".join(parts[:i] + parts[i + 1:])


@pytest.mark.parametrize("model", MODELS)
def test_decorated_names_count_like_the_model(model):
    key = count_key(resolve_model(model))
    for alias in _forms(model):
        for spelling in _spellings(alias):
            assert count_key(resolve_model(spelling)) == key, (model, spelling)


@pytest.mark.parametrize("model", MODELS)
def test_shortened_names_never_change_a_count_relevant_parameter(model):
    """A name missing a size/resolution/version word resolves to a model that counts alike, to the model it
    spells out exactly, or raises KeyError; never to a default that counts differently."""
    key = count_key(resolve_model(model))
    for alias in _forms(model):
        for short in _shortened(alias):
            for spelling in (short, short + "-awq"):
                try:
                    found = resolve_model(spelling)
                except KeyError:
                    continue
                names = {name_words(a) for a in (found.name, *found.aliases)}
                assert count_key(found) == key or name_words(spelling) in names, (model, spelling, found.name)


@pytest.mark.parametrize(("name", "tokens"), [
    ("paligemma-448", 1024), ("paligemma-896", 4096), ("paligemma-224", 256), ("paligemma", 256),
    ("google/paligemma-3b-mix-896", 4096), ("paligemma-3b-448-awq", 1024), ("PaliGemma-448", 1024),
    ("paligemma2-448", 1024), ("paligemma2-896", 4096), ("paligemma2-10b-448", 1024), ("paligemma2", 256),
])
def test_paligemma_resolutions_count_their_own_tokens(name, tokens):
    assert count((512, 512), model=name).image_tokens == tokens


@pytest.mark.parametrize(("name", "model"), [
    ("paligemma-448", "paligemma-3b-pt-448"), ("paligemma2-896", "paligemma2-3b-pt-896"),
    ("smolvlm-256m-instruct-gguf", "smolvlm-256m-instruct"), ("HuggingFaceTB/SmolVLM-500M-Instruct-AWQ",
                                                              "smolvlm-500m-instruct"),
    ("qwen2-vl-7b-instruct-awq", "qwen2-vl-7b-instruct"), ("Qwen/Qwen2.5-VL-7B-Instruct-AWQ", "qwen2.5-vl-7b-instruct"),
    ("qwen2_5_vl_3b_instruct", "qwen2.5-vl-3b-instruct"), ("internvl2_5-8b-mpo-awq", "internvl2.5-8b"),
    ("llava-v1.6-7b", "llava-v1.6-mistral-7b"), ("gpt-4o-2024-12-17", "gpt-4o"),
    ("gemini-2.5-flash-lite-preview-06-17", "gemini-2.5-flash"), ("claude_3_5_sonnet", "claude-3.5-sonnet"),
    ("gemma-3-4b-it-qat-q4_0-gguf", "gemma-3-4b-it"), ("minicpm-v2.6", "minicpm-v-2.6"),
    ("llava-1.5-7b-finetuned-on-cats", "llava-1.5-7b"),
])
def test_variant_names_resolve_to_the_variant(name, model):
    assert resolve_model(name).name == model
    assert count((512, 512), model=name).image_tokens == count((512, 512), model=model).image_tokens


@pytest.mark.parametrize(("name", "message"), [
    ("paligemma-672", "unknown model 'paligemma-672'; did you mean"),  # no 672 variant: no silent 224
    ("paligemma2-10b-896", "unknown model"),  # not in the table
    ("paligemma-3b", "ambiguous: it could be 'paligemma-3b-pt-224', 'paligemma-3b-pt-448', 'paligemma-3b-pt-896'"),
    ("llava-7b", "ambiguous: it could be 'llava-1.5-7b'"),  # LLaVA-1.5 (576) or LLaVA-NeXT (up to 2,928)?
    ("smolvlm-1b", "unknown model 'smolvlm-1b'"),  # sizes differ in image_seq_len
    ("gpt-4o-nano", "unknown model 'gpt-4o-nano'"),  # a tier word is never dropped
    ("lava-1.5-7b", "did you mean 'llava-1.5"),  # a misspelt stem is never guessed
    ("", "unknown model"),
])
def test_names_that_could_count_differently_raise_with_suggestions(name, message):
    with pytest.raises(KeyError, match=re.escape(message)):
        count((512, 512), model=name)


def test_no_two_models_share_their_words_unless_they_count_alike():
    seen = {}
    for entry in model_table().values():
        for alias in (entry.name, *entry.aliases):
            words = name_words(alias)
            other = seen.setdefault(words, entry)
            assert other is entry or count_key(other) == count_key(entry), (alias, other.name, entry.name)


def test_name_words():
    assert name_words("google/PaliGemma-3b-mix-448") == {"paligemma", "3b", "448"}
    assert name_words("Qwen2_5-VL-7B-Instruct-GPTQ-Int4") == {"qwen2.5", "vl", "7b"}
    assert name_words("llava-v1.6-34b-hf") == {"llava", "1.6", "34b"}
    assert name_words("claude-3-5-sonnet-20241022") == {"claude", "3.5", "sonnet"}
    assert name_words("idefics2_8b") == {"idefics2", "8b"}
    assert name_words("gemini-2.0-flash-preview-02-05") == {"gemini", "2.0", "flash"}
    with pytest.raises(TypeError, match="a model name is a string"):
        resolve_model(448)
