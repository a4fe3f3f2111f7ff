"""The names a setting chooses from, in a module that imports nothing heavy, so that reading settings (and
so starting any `strata` command) never waits for torch or transformers."""

from __future__ import annotations

#: update encodings (strata.codec)
ENCODINGS = ("fp32", "bf16", "int8", "topk", "lowrank")
#: the rank of the `lowrank` encoding's factors, by default and at most (strata.lowrank_codec)
DEFAULT_LOWRANK_RANK, MAX_LOWRANK_RANK = 16, 1024
#: what a federation trains (strata.modeling)
TASKS = ("sequence-classification", "causal-lm", "instruction")
#: how a LoRA federation combines its members' adapters (strata.adapters, coordinator/lora_aggregation.py)
LORA_AGGREGATIONS = ("product", "factors")
#: the server optimizers (strata.optimizers)
OPTIMIZERS = ("fedavg", "fedavgm", "fedadagrad", "fedyogi", "fedadam")
#: the LoRA target that names every linear layer but the output head (peft's shorthand)
ALL_LINEAR = "all-linear"
#: the tasks that train a causal language model (perplexity and token accuracy; no labels)
LANGUAGE_TASKS = ("causal-lm", "instruction")
