"""The rebuilder: physically remove units/filters from Keras models.

- `dead_units(model)`: units whose removal cannot change the outputs.
- `remove_units(model, plan)`: a new, smaller model (coupled channels follow).
- `prunable_units(model)`: the unit sets a plan can name (heads, FFN units).
- `drop_blocks(model, blocks)`: remove whole residual blocks (depth).
- `slim(model)`: `remove_units(model, dead_units(model))`, exact.
- `drop_input_features(model)`: stop reading input features no Dense uses.
- `PruningPlan`: a plan `{layer: indices}` plus coupled groups, as JSON.
- `register_handler(layer_class, handler)`: teach kprune a custom layer.
"""

from kprune.surgery.analysis import ChannelAnalysis
from kprune.surgery.blocks import Block, cut_points, find_blocks
from kprune.surgery.composite import CompositeRebuildError
from kprune.surgery.dead import dead_units
from kprune.surgery.depth import drop_blocks, residual_blocks
from kprune.surgery.errors import (
    CouplingError,
    SurgeryError,
    UnsupportedLayerError,
    UnsupportedModelError,
)
from kprune.surgery.handlers import (
    ChannelwiseHandler,
    LayerChange,
    LayerHandler,
    MixingHandler,
    ProducerHandler,
    get_handler,
    register_handler,
    unregister_handler,
)
from kprune.surgery.inputs import SelectFeatures, drop_input_features
from kprune.surgery.plan import PruningPlan
from kprune.surgery.pruned_model import PrunedModel
from kprune.surgery.rebuild import plan_removal, remove_units, slim
from kprune.surgery.replace import replace_blocks
from kprune.surgery.resized import Resized
from kprune.surgery.units import UnitSet, prunable_units

__all__ = [
    "Block",
    "ChannelAnalysis",
    "ChannelwiseHandler",
    "CompositeRebuildError",
    "CouplingError",
    "LayerChange",
    "LayerHandler",
    "MixingHandler",
    "ProducerHandler",
    "PrunedModel",
    "PruningPlan",
    "Resized",
    "SelectFeatures",
    "SurgeryError",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "UnitSet",
    "cut_points",
    "dead_units",
    "drop_blocks",
    "drop_input_features",
    "find_blocks",
    "get_handler",
    "plan_removal",
    "prunable_units",
    "register_handler",
    "remove_units",
    "replace_blocks",
    "residual_blocks",
    "slim",
    "unregister_handler",
]
