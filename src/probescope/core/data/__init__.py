"""Texts in: readers for user data, and the default corpus that needs no download."""

from .corpus import DEFAULT_CORPUS_NAME, corpus_name, corpus_texts, default_corpus
from .readers import data_hash, read_records, read_texts

__all__ = ["DEFAULT_CORPUS_NAME", "corpus_name", "corpus_texts", "data_hash", "default_corpus", "read_records", "read_texts"]
