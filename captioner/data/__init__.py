"""Datasets: reading videos, vocabularies, annotation files (MSVD, MSR-VTT, synthetic) and the captioning DataModule."""
