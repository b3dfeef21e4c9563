"""Build the VLMs' own Hugging Face processors offline, as references for vistok's token counts.

No hub access: each processor is made from its class with the checkpoint's parameters set explicitly,
and a tiny WordLevel tokenizer that knows the model's special image tokens. The reference count is the
number of image placeholder ids in ``input_ids`` after running the real processor on a real image.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image


def helper_total(counted) -> int:
    """What the processors' size-only ``_get_num_multimodal_tokens`` reports as ``num_image_tokens`` for a vistok
    count: the total positions (placeholders plus wrappers such as ``<img></img>`` or ``[IMG_END]``) before
    transformers 5.25, the image placeholders alone from 5.25 on (the end-to-end tests check both totals)."""
    import transformers
    from packaging.version import Version

    wrappers = Version(transformers.__version__).release < (5, 25)
    return counted.total_positions if wrappers else counted.image_tokens


def tiny_tokenizer(special_tokens: Iterable[str], extra_words: Iterable[str] = ()):
    """A fast tokenizer whose vocabulary holds <unk>, a few words and the given special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = list(dict.fromkeys(special_tokens))
    words = ["<unk>", "<pad>", "<s>", "</s>", "describe", "this", "image", "\n", "\n\n", *extra_words]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words + special))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<s>", eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": special})
    return tok


def image_of(width: int, height: int) -> Image.Image:
    """A real RGB image of the size under test. Content does not change counts, so it is one colour,
    which Pillow fills in C (a 4000x4000 gradient would cost more than the processor itself)."""
    return Image.new("RGB", (width, height), (120, 80, 200))


def count_ids(input_ids, token_id: int) -> int:
    return int((np.asarray(input_ids) == token_id).sum())
