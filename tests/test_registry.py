"""The registry: search, lookup with close matches, options, and duplicate names."""

import ast
import importlib
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

import vistok
from vistok._registry import Registry
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


# -- the one Registry class behind every name table ----------------------------------------------------


def _plugin_package(tmp_path, monkeypatch, modules, delay=0.0):
    """A fresh package on sys.path whose ``REG`` lazily imports ``modules`` (name -> kind); each adds one
    entry and bumps ``IMPORTS`` (optionally sleeping first, to widen races)."""
    name = f"plugins_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text(
        "from vistok._registry import Registry\n"
        f"REG = Registry('widget', package={name!r}, skip=('skipped',), hint='(see widgets())')\n"
        "IMPORTS = []\n"
    )
    for module, kind in modules.items():
        (root / f"{module}.py").write_text(
            f"import time\nfrom {name} import REG, IMPORTS\ntime.sleep({delay})\nIMPORTS.append({module!r})\n"
            f"from types import SimpleNamespace\nREG.add({module!r}, SimpleNamespace(kind={kind!r}))\n"
        )
    (root / "skipped.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name), name


def test_registry_imports_its_modules_lazily_once(tmp_path, monkeypatch):
    package, name = _plugin_package(tmp_path, monkeypatch, {"alpha": "soft", "beta": "hard", "gamma": "soft"})
    assert f"{name}.alpha" not in sys.modules and "not loaded" in repr(package.REG)
    assert package.REG.list() == ["alpha", "beta", "gamma"]
    assert package.REG.list("?a*") == ["gamma"] and package.REG.list(kind="soft") == ["alpha", "gamma"]
    assert package.REG.list("b*", kind="soft") == [] and package.REG.list(kind=None) == ["alpha", "beta", "gamma"]
    assert package.REG.get("beta").kind == "hard" and "beta" in package.REG and "delta" not in package.REG
    assert package.REG.list() == ["alpha", "beta", "gamma"]
    assert sorted(package.IMPORTS) == ["alpha", "beta", "gamma"]  # once, and never the skipped module
    assert f"{name}.skipped" not in sys.modules


def test_registry_loads_once_under_concurrent_first_lookups(tmp_path, monkeypatch):
    package, _ = _plugin_package(tmp_path, monkeypatch, {f"m{i}": "soft" for i in range(6)}, delay=0.02)
    start, results = threading.Barrier(8), []

    def first_lookup():
        start.wait()
        results.append(package.REG.list())

    threads = [threading.Thread(target=first_lookup) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[f"m{i}" for i in range(6)]] * 8  # nobody sees a half-loaded registry
    assert sorted(package.IMPORTS) == [f"m{i}" for i in range(6)]


def test_registry_concurrent_adds_keep_every_name_once():
    reg: Registry[int] = Registry("thing")
    start, errors = threading.Barrier(8), []

    def add_many(worker):
        start.wait()
        for i in range(200):
            try:
                reg.add(f"n{i}", worker)  # every worker races for the same 200 names
            except ValueError:
                errors.append(i)

    threads = [threading.Thread(target=add_many, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reg) == 200 and len(errors) == 7 * 200


def test_registry_errors_name_the_input():
    reg: Registry[SimpleNamespace] = Registry("widget", hint="(see widgets())")
    reg.add("sprocket", SimpleNamespace(kind="a"), aliases=("spr",))
    with pytest.raises(ValueError, match="a widget named 'sprocket' is already registered"):
        reg.add("sprocket", SimpleNamespace(kind="b"))
    with pytest.raises(ValueError, match="a widget named 'spr' is already registered"):
        reg.add("spr", SimpleNamespace(kind="b"))  # a name may not shadow an alias
    with pytest.raises(ValueError, match="alias 'spr' of 'gear' already names 'sprocket'"):
        reg.add("gear", SimpleNamespace(kind="b"), aliases=("spr",))
    assert "gear" not in reg  # a refused add leaves nothing behind
    with pytest.raises(ValueError, match="non-empty string"):
        reg.add("", SimpleNamespace(kind="a"))
    with pytest.raises(KeyError, match=r"unknown widget 'sprockt'; did you mean 'sprocket', 'spr'\? known: sprocket "
                                        r"\(see widgets\(\)\)"):
        reg.get("sprockt")
    with pytest.raises(TypeError, match="widgets cannot be filtered by 'colour'"):
        reg.list(colour="red")
    assert reg.get("spr") is reg.get("sprocket") and reg.aliases() == {"spr": "sprocket"}
    assert reg.remove("sprocket").kind == "a" and len(reg) == 0 and reg.find("spr") is None
    with pytest.raises(KeyError, match="unknown widget"):
        reg.remove("sprocket")


def test_registry_normalised_keys_keep_the_registered_spelling():
    reg: Registry[int] = Registry("model", normalize=str.lower)
    reg.add("Qwen2-VL-7B", 1, aliases=("Qwen/Qwen2-VL-7B",))
    assert reg.get("qwen2-vl-7b") == 1 and reg.get("QWEN/qwen2-vl-7b") == 1
    assert reg.list("qwen*") == ["Qwen2-VL-7B"] and reg.list("QWEN*") == ["Qwen2-VL-7B"]
    with pytest.raises(ValueError, match="already registered"):
        reg.add("qwen2-vl-7b", 2)


def test_the_four_registries_are_registry_instances():
    from vistok.budget import core as budget_core
    from vistok.budget import models as budget_models
    from vistok.reducers import core as reducers_core
    from vistok.regions import base as regions_base

    budget_models.model_table()
    for registry, what in [(vistok.registry._tokenizers, "tokenizer"), (reducers_core._methods, "reduction method"),
                           (budget_core._families, "budget family"), (regions_base._detectors, "detector"),
                           (budget_models._models, "model")]:
        assert isinstance(registry, Registry) and registry.what == what and len(registry) > 0
    assert vistok.reduce_methods() == reducers_core._methods.list() and "tome" in vistok.reduce_methods()
    assert vistok.reduce_methods("t*") == [m for m in vistok.reduce_methods() if m.startswith("t")]
    assert "faces" in regions_base.list_detectors() and regions_base.list_detectors("f*") == ["faces"]
    assert "paligemma" in budget_core.all_families()
    with pytest.raises(KeyError, match="unknown budget family 'paligema'; did you mean 'paligemma'"):
        budget_core.get_family("paligema")
    with pytest.raises(ValueError, match="a budget family named 'gemma3' is already registered"):
        budget_core.register_family("gemma3", options=object, source="-", proof="processor")(lambda *a: None)
    with pytest.raises(ValueError, match="a reduction method named 'tome' is already registered"):
        reducers_core.register_method("tome", description="-", paper="-")(lambda *a: None)
    with pytest.raises(ValueError, match="a detector named 'faces' is already registered"):
        regions_base.register_detector("faces", description="-", source="-")(lambda: None)
    assert vistok.count((336, 336), model="llava-1.5-7b").image_tokens == 576  # the model table still resolves
    assert vistok.count((336, 336), model="LLaVA-HF/LLaVA-1.5-7B-HF").image_tokens == 576


# -- the tokenizer registry imports no tokenizer; paths go through registered handlers --------------------

def test_registry_module_imports_no_tokenizer():
    """The tokenizer modules import the registry, never the other way round (a type-only import of the
    ``Tokenizer`` protocol, under ``TYPE_CHECKING``, does not run)."""
    tree = ast.parse(Path(vistok.registry.__file__).read_text())
    type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                 and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    runtime, typing_only = set(), set()
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        (typing_only if id(node) in type_only else runtime).update(names)
    assert "vistok._registry" in runtime and not any(m.startswith("vistok.tokenizers") for m in runtime), runtime
    assert typing_only <= {"vistok.tokenizers.base"}, typing_only
    code = "import sys, vistok.registry; print(sorted(m for m in sys.modules if m.startswith('vistok.tokenizers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_loading_a_path_asks_the_registered_handlers(tmp_path):
    from vistok.registry import _paths, _tokenizers, register_path_handler
    from vistok.weights import bundled

    shipped = bundled("fsq-natural64.safetensors")
    tok = vistok.load(shipped)  # the learned tokenizer's handler
    assert tok.name == "learned" and tok.config.path == str(shipped)
    assert len(tok.encode(Image.new("RGB", (64, 64)))) == 256
    assert vistok.load(str(shipped), max_side=32).config.max_side == 32
    assert sorted(h.tokenizer for h in _paths.entries().values()) == ["clip", "learned", "sd-vae", "siglip"]
    marker = tmp_path / "notes.marker"
    marker.write_text("x")
    with pytest.raises(KeyError, match="is a path, but holds none of: .*vistok align.*vistok train.*AutoencoderKL"):
        vistok.load(marker)

    @dataclass
    class MarkerConfig:
        path: str | None = None
        size: int = 1

    calls = []
    register_tokenizer("test-marker", kind="hard", decodable=False, weights="-", description="-",
                       config=MarkerConfig)(lambda **options: calls.append(options) or "made")
    register_path_handler("test-marker", option="path", accepts=lambda p: p.endswith(".marker"),
                          holds="a marker file")
    try:
        with pytest.raises(ValueError, match="a path handler named 'test-marker' is already registered"):
            register_path_handler("test-marker", option="path", accepts=bool, holds="-")
        assert vistok.load(marker, size=3) == "made" and calls == [{"path": str(marker), "size": 3}]
        with pytest.raises(KeyError, match="holds none of: .*a folder written by `vistok train`.*; a marker file"):
            vistok.load(tmp_path)
    finally:
        _paths.remove("test-marker")
        _tokenizers.remove("test-marker")
    with pytest.raises(KeyError, match="holds none of: "):
        vistok.load(marker)


# -- capabilities are declared fields of the registry entry -----------------------------------------------

def test_capabilities_are_declared():
    regions = vistok.tokenizer_info("regions")
    assert regions.countable is False and regions.argument == "detector" and regions.extra_options
    assert all(vistok.tokenizer_info(n).countable for n in vistok.list_tokenizers() if n != "regions")
    assert vistok.list_tokenizers(countable=False) == ["regions"]
    assert vistok.list_tokenizers(preprocessing=True) == ["cnn", "efficientnet-lite0"]
    assert vistok.list_tokenizers(learned=True) == ["fsq-fmnist", "fsq-natural64", "learned"]
    assert vistok.list_tokenizers(zero_shot=True) == ["clip", "siglip", "siglip-fmnist"]
    assert vistok.list_tokenizers(decodable=True, kind="soft") == ["patch", "sd-vae"]
    with pytest.raises(TypeError, match="cannot be filtered by 'colour'"):
        vistok.list_tokenizers(colour="red")


def test_name_argument_form_uses_the_declared_argument():
    assert vistok.load("regions:faces").config.detector == "faces"
    assert vistok.load("regions:faces", method="lbp").config.detector_options == {"method": "lbp"}
    with pytest.raises(TypeError, match="'regions:faces' already sets detector; pass it once"):
        vistok.load("regions:faces", detector="text")
    with pytest.raises(KeyError, match="tokenizer 'grid' takes no ':8' argument; only regions do"):
        vistok.load("grid:8")
    with pytest.raises(KeyError, match="unknown detector 'nope'"):
        vistok.load("regions:nope")
    with pytest.raises(ValueError, match="argument 'colour' of tokenizer 'x' is not an option of GridConfig"):
        register_tokenizer("x", kind="hard", decodable=True, weights="-", description="-",
                           config=vistok.tokenizer_info("grid").config_class, argument="colour")


def test_vit_variants_declare_what_they_fix():
    assert vistok.tokenizer_info("focus-vit-s14").fixed == {"model": "focus-vit-s14"}
    assert vistok.tokenizer_info("vit").fixed == {"backend": "torch"}
    assert "model" not in vistok.tokenizer_info("focus-vit-s14").config_fields()
    assert "backend" not in vistok.tokenizer_info("vit").config_fields()
    assert vistok.load("focus-vit-s14").config.model == "focus-vit-s14"
    assert vistok.load("vit").config.backend == "torch"
    with pytest.raises(TypeError, match="'focus-vit-s14' fixes model='focus-vit-s14'; it is not an option"):
        vistok.load("focus-vit-s14", model="/some/folder")
    with pytest.raises(TypeError, match="'vit' fixes backend='torch'"):
        vistok.load("vit", backend="onnxruntime")


def test_shipped_learned_tokenizers_fix_their_quantizer():
    for name in ("fsq-fmnist", "fsq-natural64"):
        info = vistok.tokenizer_info(name)
        assert info.learned and info.fixed == {"quantizer": "fsq"} and "quantizer" not in info.config_fields()
        assert vistok.load(name).config.quantizer == "fsq"
        with pytest.raises(TypeError, match=f"'{name}' fixes quantizer='fsq'"):
            vistok.load(name, quantizer="vq")
    assert vistok.tokenizer_info("learned").fixed == {} and vistok.tokenizer_info("learned").config_fields()["quantizer"] is None
