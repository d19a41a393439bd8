"""kprune.transformers: width and depth pruning of KerasHub backbones.

- `prune(backbone, data, ffn=, heads=, hidden=, layers=)`: a smaller
  backbone of the same class, built with its own constructor, weights sliced
  from the original (Minitron activation importance; ShortGPT block
  influence for depth).
- `make_plan` / `apply_plan`: the same in two steps, with a JSON-able
  `TransformerPlan` in between.
- `importance_scores`: the scores alone.
- `block_redundancy`, `replace_blocks`: blocks replaced by linear maps fitted
  in closed form (Cannistraci et al.); the result is a Functional model.
- `FamilySpec`, `register_family`, `get_family`, `families`: what kprune
  knows about each KerasHub family (GPT-2, BERT, Llama, Mistral, Qwen,
  Qwen3, Gemma, Gemma 3, ViT, ...), and how to add one.
"""

from kprune.transformers import family_specs as _family_specs  # noqa: F401
from kprune.transformers.api import make_plan, non_embedding_params, prune
from kprune.transformers.importance import importance_scores
from kprune.transformers.linear import block_redundancy, replace_blocks
from kprune.transformers.plan import TransformerPlan
from kprune.transformers.slicing import apply_plan, norm_layers, weight_infos
from kprune.transformers.spec import FamilySpec, families, get_family, register_family

__all__ = [
    "FamilySpec",
    "TransformerPlan",
    "apply_plan",
    "block_redundancy",
    "families",
    "get_family",
    "importance_scores",
    "make_plan",
    "non_embedding_params",
    "norm_layers",
    "prune",
    "register_family",
    "replace_blocks",
    "weight_infos",
]
