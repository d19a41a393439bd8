"""Assemble prune_budget.json from the logs of runs cut short (issue 21).

The machine was shared by many jobs (load average 10-21) during these runs,
so the LeNet-5 sweep was stopped before its process wrote its JSON; its runs
are read back from the JSON lines it printed, the Torch-Pruning worker's and
the group-sparsity runs from their own outputs (same dense weights, same
split, same recipe; see prune_budget.py). Used once by hand:

    python benchmarks/_prune_budget_merge.py LENET_LOG GS_JSON TP_JSON CMD...
"""

import json
import os
import sys

from common import machine, write_results
from prune_budget import render


def main(log, gs_path, tp_path, commands):
    runs, dense = [], None
    with open(log) as f:
        for line in f:
            line = line.strip()
            if line.startswith("lenet5 seed 0: dense test error"):
                dense = float(line.rsplit(" ", 1)[1])
            if line.startswith('{"importance"'):
                runs.append(json.loads(line))
    if os.path.isfile(gs_path):
        with open(gs_path) as f:
            runs += json.load(f)
    seed = {
        "dense_test_error": dense,
        "dense_macs": 2293000,
        "runs": runs,
    }
    if os.path.isfile(tp_path):
        with open(tp_path) as f:
            seed["torch_pruning"] = json.load(f)
    elif os.path.isfile(tp_path + ".log"):
        with open(tp_path + ".log") as f:
            tp_runs = [json.loads(x) for x in f if x.startswith('{"importance"')]
        seed["torch_pruning"] = {"runs": tp_runs, "stopped_early": True}
    scratch = os.path.join(os.path.dirname(gs_path), "scratch_lenet_out.json")
    if os.path.isfile(scratch):
        with open(scratch) as f:
            runs += json.load(f)
    info = machine()
    info["load_after"] = os.getloadavg()
    result = {
        "command": commands,
        "machine": info,
        "models": {
            "lenet5": {
                "recipe": {
                    "dense_epochs": 3,
                    "finetune_epochs": 1,
                    "optimizer": "Adam(lr=0.001, epsilon=1e-7)",
                    "batch": 128,
                    "calibration_images": 512,
                    "finetune_samples": 10000,
                },
                "seeds": {"0": seed},
            }
        },
    }
    write_results("prune_budget", result, render(result))
    # The Torch-Pruning point it also rendered (vs_torch_pruning.md) was
    # superseded by benchmarks/vs_torch_pruning.py's runs.


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], " ; ".join(sys.argv[4:]))
