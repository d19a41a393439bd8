"""Per-layer handlers: how each layer class moves, uses and loses channels.

A handler answers four questions about a layer call (a node):

1. `connect`: which input channels are the *same* channels as which output
   channels (they must be removed together: `ctx.tie`), and which channels
   can never be removed (`ctx.pin`, e.g. a layer kprune does not understand)
   or can only be removed at the cost of exactness (`ctx.pin_exact`, e.g.
   LayerNormalization mixes all channels into its statistics).
2. `uses`: for layers with weights that *consume* input channels (Dense,
   Conv, ...), which input channel feeds which output unit.
3. `constant_mask`: which output channels are constant when the given input
   channels are constant (the values themselves are computed by running the
   layer).
4. `rebuild`: the config and weights of the smaller layer.

The built-in handlers live in one module per family (`channelwise`,
`reshaping`, `merging`, `producers`, `embedding`, ...), each registering its
classes on import. Users teach kprune their own layers with
`register_handler`:

```python
class MyScaleHandler(kprune.surgery.ChannelwiseHandler):
    pass  # per-channel weights on the last axis are sliced automatically

kprune.surgery.register_handler(MyScale, MyScaleHandler())
```
"""

from kprune.surgery.handlers.attention import MultiHeadAttentionHandler
from kprune.surgery.handlers.base import (
    OPAQUE,
    LayerChange,
    LayerHandler,
    SublayerChanges,
    Use,
    get_handler,
    register_handler,
    unregister_handler,
)
from kprune.surgery.handlers.channelwise import (
    ActivationHandler,
    AxisChannelwiseHandler,
    ChannelwiseHandler,
    GroupNormHandler,
    LayerNormHandler,
    LayerScaleHandler,
    MixingHandler,
    NormalizationHandler,
    RescalingHandler,
    SoftmaxHandler,
)
from kprune.surgery.handlers.embedding import EmbeddingHandler
from kprune.surgery.handlers.grouped_attention import GroupedQueryAttentionHandler
from kprune.surgery.handlers.keras_hub import (
    PositionEmbeddingHandler,
    ReversibleEmbeddingHandler,
)
from kprune.surgery.handlers.merging import (
    ConcatenateHandler,
    ElementwiseOpHandler,
    MergeHandler,
)
from kprune.surgery.handlers.ops import (
    EinsumOpHandler,
    PassThroughOpHandler,
    ReductionOpHandler,
    ReshapeOpHandler,
)
from kprune.surgery.handlers.producers import (
    ConvTransposeHandler,
    DepthwiseConvHandler,
    ProducerHandler,
    SeparableConvHandler,
)
from kprune.surgery.handlers.reshaping import (
    FlattenHandler,
    PermuteHandler,
    ReshapeHandler,
)

__all__ = [
    "OPAQUE",
    "ActivationHandler",
    "AxisChannelwiseHandler",
    "ChannelwiseHandler",
    "ConcatenateHandler",
    "ConvTransposeHandler",
    "DepthwiseConvHandler",
    "EinsumOpHandler",
    "ElementwiseOpHandler",
    "EmbeddingHandler",
    "FlattenHandler",
    "GroupNormHandler",
    "GroupedQueryAttentionHandler",
    "LayerChange",
    "LayerHandler",
    "LayerNormHandler",
    "LayerScaleHandler",
    "MergeHandler",
    "MixingHandler",
    "MultiHeadAttentionHandler",
    "NormalizationHandler",
    "PassThroughOpHandler",
    "PermuteHandler",
    "PositionEmbeddingHandler",
    "ProducerHandler",
    "ReductionOpHandler",
    "ReshapeOpHandler",
    "ReshapeHandler",
    "RescalingHandler",
    "ReversibleEmbeddingHandler",
    "SeparableConvHandler",
    "SoftmaxHandler",
    "SublayerChanges",
    "Use",
    "get_handler",
    "register_handler",
    "unregister_handler",
]
