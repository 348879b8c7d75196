"""Streamed text corpora: tokenizers, document sources, packing, the resumable stream and its DataModule."""

from memlab.data.text.datamodule import TextDataModule
from memlab.data.text.tokenizer import ByteTokenizer, load_tokenizer

__all__ = ["ByteTokenizer", "TextDataModule", "load_tokenizer"]
