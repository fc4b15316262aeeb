"""C baselines of the llama2 runner (see build.py)."""
