"""Whole programs built on kdsl, importable as kdsl.examples (e.g. the llama2 runner)."""
