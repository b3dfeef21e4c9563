"""The registry: search, lookup with close matches, options, and duplicate names."""

import subprocess
import sys

import pytest

import vistok
from vistok.registry import register_tokenizer


def test_builtins_are_listed_and_filtered():
    assert {"grid", "patch"} <= set(vistok.list_tokenizers())
    assert vistok.list_tokenizers("p*") == ["patch"]
    assert "grid" in vistok.list_tokenizers(kind="hard") and "patch" not in vistok.list_tokenizers(kind="hard")
    assert "patch" in vistok.list_tokenizers(kind="soft") and "grid" not in vistok.list_tokenizers(kind="soft")
    assert vistok.list_tokenizers("nothing*") == []


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="did you mean 'grid'"):
        vistok.load("gird")
    with pytest.raises(KeyError, match=r"known: (\w[\w-]*, )*grid, "):
        vistok.tokenizer_info("zzzzzz")


def test_unknown_option_lists_the_real_ones():
    with pytest.raises(TypeError, match=r"no option 'cells'.*cell=16"):
        vistok.load("grid", cells=8)


def test_options_reach_the_config():
    tok = vistok.load("patch", dim=12, max_side=128)
    assert tok.config.dim == 12 and tok.config.max_side == 128 and tok.dim == 12
    assert vistok.tokenizer_info("patch").config_fields()["patch"] == 16


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_tokenizer("grid", kind="hard", decodable=True, weights="-", description="-", config=object)(
            lambda: None
        )
    with pytest.raises(ValueError, match="kind must be"):
        register_tokenizer("x", kind="medium", decodable=True, weights="-", description="-", config=object)  # type: ignore[arg-type]


def test_import_is_light():
    """`import vistok` must not pull in torch, sklearn, matplotlib or the tokenizer modules."""
    code = (
        "import sys, vistok; heavy = [m for m in ('torch', 'sklearn', 'matplotlib', 'vistok.tokenizers.grid') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
