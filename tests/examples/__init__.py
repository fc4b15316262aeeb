"""Tests of the whole programs in examples/ (kdsl.examples)."""
