"""The names a setting chooses from, in a module that imports nothing heavy, so that reading settings (and
so starting any `strata` command) never waits for torch or transformers."""

from __future__ import annotations

#: update encodings (strata.codec)
ENCODINGS = ("fp32", "bf16", "int8", "topk")
#: what a federation trains (strata.modeling)
TASKS = ("sequence-classification", "causal-lm", "instruction")
#: the tasks that train a causal language model (perplexity and token accuracy; no labels)
LANGUAGE_TASKS = ("causal-lm", "instruction")
