"""Matching a model name the table does not hold verbatim (``qwen2-vl-7b-instruct-awq``, ``paligemma-448``) to
the entry it means, without ever crossing a variant that changes the count.

A name is read as a set of words (split at ``-``, ``_``, ``:``, spaces; the hub organisation dropped;
``v1.6`` read as ``1.6``; ``internvl2_5`` as ``internvl2.5`` and ``claude-3-5`` as ``claude-3.5``). Words that never change preprocessing are ignored:
training stages (instruct, it, pt, chat, base, mix, thinking...), packaging and quantisation (hf, awq, gptq,
gguf, int4, 4bit, q4_k_m...) and release dates (2024-05-13, 20241022, 2409, preview-06-17). Words no table
name uses and that hold no digit (``finetuned``, ``cats``) are ignored too, except the first (the model's
stem: a misspelt ``lava-1.5-7b`` is not guessed). Every other word must be found:

1. a table name whose words are exactly the query's words wins (``llava-1.5-7b-hf-awq`` is
   ``llava-1.5-7b``); when several do, they must count alike;
2. otherwise the table names that hold every query word are candidates (``paligemma-448`` matches
   ``paligemma-3b-448``). They must all count alike (same family rule and options): then the one with the
   fewest extra words answers; if they differ (``llava-7b``: LLaVA-1.5 or LLaVA-NeXT?), or nothing holds
   every word (``paligemma-672``, ``smolvlm-1b``), a ``KeyError`` lists the close names.

So a resolution, resize or size word (``448``, ``7b``, ``256m``, ``mini``) is never dropped in favour of a
default, which is how ``paligemma-448`` used to count as the 224 model (256 tokens instead of 1,024).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["name_words", "count_key", "NameIndex"]

_SPLIT = re.compile(r"[-_\s:]+")
# a version written with "_" or "-" for its dot: internvl2_5, qwen2_5, claude-3-5, minicpm-v-2_6 (not idefics2_8b)
_VERSION_SEP = re.compile(r"(?<=[a-z]\d)_(?=\d(?![a-z0-9.]))|(?<![a-z0-9.])(\d)[-_](?=\d(?![a-z0-9.]))")
_DATES = re.compile(
    r"(?<![\d.])(?:(?:19|20)\d{2}[-_]?(?:0[1-9]|1[0-2])[-_]?(?:0[1-9]|[12]\d|3[01])"  # 2024-05-13, 20241022
    r"|(?:0[1-9]|1[0-2])[-_](?:0[1-9]|[12]\d|3[01]))(?![\d.])"  # preview-06-17
)
_YYMM = re.compile(r"2[3-9](?:0[1-9]|1[0-2])")  # 2409, 2503 (Mistral, Qwen release tags)
_QUANT = re.compile(r"(?:u?int|fp|bf|nf|i?q|w\d+a)\d+[\w.]*|\d+bits?|\d+(?:\.\d+)?bpw")
# Words that name a training stage, a packaging or a quantisation: none changes how an image is preprocessed.
_NEUTRAL = frozenset({
    "instruct", "it", "pt", "chat", "base", "mix", "ft", "sft", "dpo", "rlhf", "orpo", "mpo", "thinking", "ov",
    "si", "latest", "preview", "exp", "hf", "awq", "gptq", "gguf", "ggml", "exl2", "mlx", "onnx", "bnb",
    "quantized", "quant", "dynamic", "lora", "merged",
})


def _words(name: str) -> list[str]:
    """The count-relevant words of a model name, in order."""
    text = _DATES.sub("-", name.strip().lower().rsplit("/", 1)[-1])
    text = _VERSION_SEP.sub(lambda m: (m.group(1) or "") + ".", text)
    words = []
    for word in _SPLIT.split(text):
        word = word[1:] if len(word) > 1 and word[0] == "v" and word[1].isdigit() else word
        if word and word not in _NEUTRAL and not _QUANT.fullmatch(word) and not _YYMM.fullmatch(word):
            words.append(word)
    return words


def name_words(name: str) -> frozenset[str]:
    """The words of a model name that can change its count (see the module docstring)."""
    return frozenset(_words(name))


def count_key(entry: Any) -> str:
    """What decides an entry's count: its family rule and option overrides (two entries with equal keys
    count every image alike)."""
    return json.dumps([entry.family, entry.options], sort_keys=True, default=str)


@dataclass(frozen=True)
class _Form:
    words: frozenset[str]
    order: int  # position of the entry in the table, the tie-break
    entry: Any


class NameIndex:
    """The table's names by their words; :meth:`match` resolves a name the table does not hold verbatim."""

    def __init__(self, entries: Iterable[Any]) -> None:
        self.forms: list[_Form] = []
        for order, entry in enumerate(entries):
            seen: set[frozenset[str]] = set()
            for alias in (entry.name, *entry.aliases):
                words = name_words(alias)
                if words and words not in seen:
                    seen.add(words)
                    self.forms.append(_Form(words, order, entry))
        self.vocabulary = frozenset(w for form in self.forms for w in form.words)

    def _query_words(self, name: str) -> frozenset[str]:
        """The query's words less unknown digit-free ones; empty when its first word (the model's stem,
        ``llava`` in ``llava-1.5-7b``) is unknown, so a misspelt stem is never guessed."""
        words = _words(name)
        if not words or words[0] not in self.vocabulary:
            return frozenset()
        return frozenset(w for w in words if w in self.vocabulary or any(c.isdigit() for c in w))

    def match(self, name: str, known_forms: Mapping[str, str]) -> Any:
        """The one entry ``name`` means, or ``KeyError`` naming the close matches (``known_forms``: every
        spelled-out name and alias, for suggestions)."""
        words = self._query_words(name)
        best: dict[str, tuple[int, int, Any]] = {}  # entry name -> (extra words, table order, entry)
        if words:
            for form in self.forms:
                if words <= form.words:
                    rank = (len(form.words - words), form.order, form.entry)
                    if form.entry.name not in best or rank[:2] < best[form.entry.name][:2]:
                        best[form.entry.name] = rank
        ranked = sorted(best.values(), key=lambda r: r[:2])
        exact = [r for r in ranked if r[0] == 0]
        candidates = exact or ranked
        if candidates and len({count_key(r[2]) for r in candidates}) == 1:
            return candidates[0][2]
        if candidates:
            listed = ", ".join(repr(r[2].name) for r in candidates[:8])
            raise KeyError(f"model {name!r} is ambiguous: it could be {listed}, which count differently; "
                           "pass one of those names")
        query = name.strip().lower().rsplit("/", 1)[-1]
        close = difflib.get_close_matches(query, sorted(known_forms), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown model {name!r}{hint} (vistok.budget.list_models() lists them all; "
                       "pass family=... to count with a family rule directly)")
