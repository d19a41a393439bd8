"""kprune.criteria: per-unit importance, selection, greedy pruning, pictures.

- `car_scores(model, layer, x, y)`: CAR / RAR (Abbasi-Asl & Yu): the metric
  drop when each unit alone is removed, computed fast and equal to the
  surgery's result; `AblationScorer` is the engine.
- `l1_scores`, `mean_activation_scores`, `random_scores`: baselines with the
  same signature.
- `select_lowest`, `greedy_prune`: greedy iterative pruning to a
  `kprune.surgery.PruningPlan`.
- `plot_filters`, `plot_scores`: PNG pictures (matplotlib optional).
- `group_importance`, `normalize_scores`, `BudgetPlanner`: scores of coupled
  groups (l1, l2, fpgm, lamp, taylor, activation, car, random) normalized for
  a global ranking, and selection to a MACs / params / latency budget (used
  by `kprune.prune`).
- `block_redundancy`, `select_blocks`: redundant blocks (Cannistraci et al.).
- `collect_statistics`, `Tap`: activation statistics of chosen sublayers,
  captured while the model runs (wrappers removed afterwards).
- `activation_scores`, `TransformerScores`: Minitron width importance and
  ShortGPT block influence of transformer blocks.
"""

from kprune.criteria.ablation import AblationScorer
from kprune.criteria.baselines import l1_scores, mean_activation_scores, random_scores
from kprune.criteria.block_redundancy import (
    BlockCandidate,
    block_redundancy,
    select_blocks,
)
from kprune.criteria.budget import BudgetPlanner
from kprune.criteria.calibration import Tap, collect_statistics, iterate_batches
from kprune.criteria.car import car_scores, measure, surgery_scores
from kprune.criteria.gradients import gradient_means
from kprune.criteria.greedy import greedy_prune, select_lowest
from kprune.criteria.group_importance import (
    IMPORTANCES,
    group_importance,
    normalize_scores,
)
from kprune.criteria.latency_table import LatencyTable
from kprune.criteria.metrics import importance, resolve_metric
from kprune.criteria.plots import filter_images, plot_filters, plot_scores
from kprune.criteria.transformer_scores import TransformerScores, activation_scores

__all__ = [
    "IMPORTANCES",
    "LatencyTable",
    "BudgetPlanner",
    "gradient_means",
    "group_importance",
    "normalize_scores",
    "AblationScorer",
    "BlockCandidate",
    "Tap",
    "TransformerScores",
    "activation_scores",
    "block_redundancy",
    "car_scores",
    "collect_statistics",
    "filter_images",
    "greedy_prune",
    "importance",
    "iterate_batches",
    "l1_scores",
    "mean_activation_scores",
    "measure",
    "plot_filters",
    "plot_scores",
    "random_scores",
    "resolve_metric",
    "select_blocks",
    "select_lowest",
    "surgery_scores",
]
