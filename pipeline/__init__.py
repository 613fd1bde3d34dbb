"""Thresher: a data-curation pipeline for open image-text pre-training datasets."""

__version__ = "0.1.0"
