"""Shoal: student parallelism for fast online inference of BERT-like classifiers."""

__version__ = "0.1.0"
