"""Aligning images and text: SigLIP's sigmoid loss and CLIP's softmax loss, trained LiT-style on frozen towers.

- :func:`sigmoid_loss`, :func:`sigmoid_loss_chunked` (Zhai et al., ICCV 2023) and :func:`softmax_loss` (Radford
  et al., ICML 2021): the losses, one module each.
- :func:`train`: projection heads on frozen towers (:mod:`.towers`), from ``fashion-mnist`` or a caption file;
  the folder it writes opens with ``vistok.load("siglip", model=OUT)`` (``"clip"`` for the softmax loss).
- ``vistok.load("siglip-fmnist")``: the shipped sigmoid-loss heads on EfficientNet-Lite0 and all-MiniLM-L6-v2.
- :func:`zero_shot_accuracy`, :func:`recall_at`: the scores the benchmark reports.
"""

from vistok.align.data import CLASSES, HELD_OUT, NAMES, TEMPLATES, fashion_mnist_pairs, read_captions
from vistok.align.evaluate import recall_at, zero_shot_accuracy
from vistok.align.sigmoid_loss import sigmoid_loss, sigmoid_loss_chunked
from vistok.align.softmax_loss import softmax_loss
from vistok.align.train import LOSSES, AlignError, train

__all__ = ["sigmoid_loss", "sigmoid_loss_chunked", "softmax_loss", "train", "AlignError", "LOSSES",
           "zero_shot_accuracy", "recall_at", "CLASSES", "NAMES", "TEMPLATES", "HELD_OUT", "fashion_mnist_pairs",
           "read_captions"]
