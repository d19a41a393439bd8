"""Torch-Pruning side of benchmarks/prune_budget.py (run in .venv-tp only).

Never imported by kprune. Reads a job JSON (model kind, dense Keras weights
as .npz, MNIST split, budgets, importances, recipe, seed), rebuilds the same
network in PyTorch with the Keras weights copied across, prunes it with
Torch-Pruning to each MACs budget (global ranking, the same MAC rules as
kprune: conv `positions * k * k * c_in * c_out`, linear `in * out`; a
bisection on TP's global pruning ratio finds the smallest ratio that meets
the budget), fine-tunes with the same recipe (Adam, same lr / eps, batch,
epochs, shuffling seed) and writes test / validation errors and timings.

    .venv-tp/bin/python benchmarks/_tp_worker.py job.json out.json
"""

import copy
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 500)
        self.fc2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = x.permute(0, 2, 3, 1).flatten(1)  # Keras' NHWC flatten order
        return self.fc2(F.relu(self.fc1(x)))


def _bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, padding=1)
        self.bn_a = _bn(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, padding=1)
        self.bn_b = _bn(cout)
        self.proj = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.bn_p = _bn(cout) if cin != cout else None

    def forward(self, x):
        h = F.relu(self.bn_a(self.conv_a(x)))
        h = self.bn_b(self.conv_b(h))
        s = x if self.proj is None else self.bn_p(self.proj(x))
        return F.relu(s + h)


class ResNetSmall(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.bn_stem = _bn(16)
        self.b1 = Block(16, 16)
        self.b2 = Block(16, 32)
        self.b3 = Block(32, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.bn_stem(self.stem(x)))
        x = F.max_pool2d(self.b1(x), 2)
        x = F.max_pool2d(self.b2(x), 2)
        x = self.b3(x)
        return self.fc(x.mean(dim=(2, 3)))


def _conv_from(w, conv, bias):
    conv.weight.data = torch.tensor(np.transpose(w, (3, 2, 0, 1)).copy())
    conv.bias.data = torch.tensor(bias)


def _bn_from(bn, gamma, beta, mean, var):
    bn.weight.data = torch.tensor(gamma)
    bn.bias.data = torch.tensor(beta)
    bn.running_mean.data = torch.tensor(mean)
    bn.running_var.data = torch.tensor(var)


def build(kind, weights):
    """The torch model with the Keras weights (names as in prune_budget.py)."""
    w = {k: weights[k] for k in weights.files}
    if kind == "lenet5":
        model = LeNet5()
        _conv_from(w["conv1/kernel"], model.conv1, w["conv1/bias"])
        _conv_from(w["conv2/kernel"], model.conv2, w["conv2/bias"])
        model.fc1.weight.data = torch.tensor(w["fc1/kernel"].T.copy())
        model.fc1.bias.data = torch.tensor(w["fc1/bias"])
        model.fc2.weight.data = torch.tensor(w["fc2/kernel"].T.copy())
        model.fc2.bias.data = torch.tensor(w["fc2/bias"])
        return model
    model = ResNetSmall()
    _conv_from(w["stem/kernel"], model.stem, w["stem/bias"])
    _bn_from(model.bn_stem, *(w[f"bn_stem/{n}"] for n in _BN))
    for name in ("b1", "b2", "b3"):
        block = getattr(model, name)
        for part, conv, bn in (
            ("a", block.conv_a, block.bn_a),
            ("b", block.conv_b, block.bn_b),
            ("p", block.proj, block.bn_p),
        ):
            if conv is None:
                continue
            _conv_from(
                w[f"{name}_conv_{part}/kernel"], conv, w[f"{name}_conv_{part}/bias"]
            )
            _bn_from(bn, *(w[f"{name}_bn_{part}/{n}"] for n in _BN))
    model.fc.weight.data = torch.tensor(w["fc/kernel"].T.copy())
    model.fc.bias.data = torch.tensor(w["fc/bias"])
    return model


_BN = ("gamma", "beta", "moving_mean", "moving_variance")


def macs(model):
    """kprune's MAC rules: conv positions*k*k*cin*cout, linear in*out."""
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            positions = output.shape[2] * output.shape[3]
            total[0] += positions * module.weight.numel()
        elif isinstance(module, nn.Linear):
            total[0] += module.weight.numel()

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    return total[0]


def _importance(name):
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    raise ValueError(name)


def prune_once(dense, importance, ratio, calib):
    model = copy.deepcopy(dense)
    model.eval()
    imp = _importance(importance)
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros(1, 1, 28, 28),
        importance=imp,
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=[model.fc2 if hasattr(model, "fc2") else model.fc],
    )
    if importance == "taylor":
        x, y = calib
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
    pruner.step()
    model.zero_grad()
    return model


def prune_to(dense, importance, target, calib):
    """Bisection on TP's global pruning ratio: smallest ratio meeting target."""
    base = macs(dense)
    lo, hi = 0.0, 0.99
    best = None
    for _ in range(10):
        mid = (lo + hi) / 2
        model = prune_once(dense, importance, mid, calib)
        if macs(model) <= target * base:
            hi, best = mid, model
        else:
            lo = mid
    if best is None:
        best = prune_once(dense, importance, hi, calib)
    return best, hi


def errors(model, x, y, batch=1000):
    model.eval()
    wrong = 0
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            pred = model(x[lo : lo + batch]).argmax(1)
            wrong += int((pred != y[lo : lo + batch]).sum())
    return wrong / len(x)


def finetune(model, x, y, epochs, lr, batch, seed):
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-7)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        order = torch.tensor(rng.permutation(len(x)))
        for lo in range(0, len(x), batch):
            idx = order[lo : lo + batch]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def main(job_path, out_path):
    with open(job_path) as f:
        job = json.load(f)
    torch.manual_seed(job["seed"])
    torch.set_num_threads(job.get("threads", 2))
    data = np.load(job["data"])
    x, y = torch.tensor(data["x"]), torch.tensor(data["y"])
    xv, yv = torch.tensor(data["xv"]), torch.tensor(data["yv"])
    xt, yt = torch.tensor(data["xt"]), torch.tensor(data["yt"])
    x, xv, xt = (a.permute(0, 3, 1, 2).contiguous() for a in (x, xv, xt))
    calib = (x[: job["calibration"]], y[: job["calibration"]])
    dense = build(job["kind"], np.load(job["weights"]))
    results = {"dense_test_error": errors(dense, xt, yt), "runs": []}
    base = macs(dense)
    for importance in job["importances"]:
        for budget in job["budgets"]:
            start = time.perf_counter()
            pruned, ratio_found = prune_to(dense, importance, 1.0 / budget, calib)
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            prune_once(dense, importance, ratio_found, calib)
            step_seconds = time.perf_counter() - start
            ratio = macs(pruned) / base
            finetune(pruned, x, y, job["epochs"], job["lr"], job["batch"], job["seed"])
            results["runs"].append(
                {
                    "importance": importance,
                    "budget": budget,
                    "macs_ratio": ratio,
                    "prune_seconds": seconds,
                    "step_seconds": step_seconds,
                    "tp_pruning_ratio": ratio_found,
                    "val_error": errors(pruned, xv, yv),
                    "test_error": errors(pruned, xt, yt),
                }
            )
            print(json.dumps(results["runs"][-1]), flush=True)
    results["torch"] = torch.__version__
    results["torch_pruning"] = getattr(tp, "__version__", "?")
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
