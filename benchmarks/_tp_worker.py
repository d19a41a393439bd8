"""Torch-Pruning side of benchmarks/vs_torch_pruning.py (run in .venv-tp only).

Never imported by kprune. A server on stdin / stdout, one JSON object a
line, so that the driver can time kprune's and Torch-Pruning's pruning calls
one after the other under the same load:

- `{"op": "load", "kind", "weights", "data", "calibration", "threads",
  "seed"}`: rebuild the network in PyTorch with the dense Keras weights
  (`.npz`) copied across, read the MNIST split; answers the dense errors and
  the largest difference from the Keras logits stored with the weights.
- `{"op": "prune", "importance", "budget", "steps"}`: prune the dense model
  with Torch-Pruning to `MACs <= dense / budget` (kprune's MAC rules: conv
  `positions * k * k * c_in * c_out`, linear `in * out`) with global
  ranking: a bisection (`steps` MetaPruner runs) on TP's global pruning
  ratio finds the smallest ratio that meets the budget. For `taylor` the
  gradients on the calibration images are computed once (inside the timed
  call) and copied into each candidate. Answers the whole call's time, the
  time of one MetaPruner step at the ratio found, and the one-shot
  validation error.
- `{"op": "finetune", "epochs", "lr", "batch", "seed", "samples",
  "recalibrate"}`: fine-tune the last pruned model (Adam, `eps=1e-7`, the
  driver's per-epoch permutations of the training images), then recompute
  the BatchNorm statistics on the first `recalibrate` images; answers its
  errors.
- `{"op": "quit"}`.

    .venv-tp/bin/python benchmarks/_tp_worker.py   # driven by vs_torch_pruning.py
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
        x = x.flatten(1)  # NCHW order: fc1's columns are permuted from Keras'
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
        # Keras flattens (h, w, c); PyTorch (c, h, w). Permuting fc1's input
        # columns keeps the plain `flatten`, which Torch-Pruning's dependency
        # graph maps to conv2's channels (a `permute` before it is not).
        kernel = w["fc1/kernel"].reshape(4, 4, 50, 500).transpose(2, 0, 1, 3)
        model.fc1.weight.data = torch.tensor(kernel.reshape(800, 500).T.copy())
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


def _with_grads(dense):
    """A deep copy of `dense` that keeps its parameters' gradients."""
    model = copy.deepcopy(dense)
    for new, old in zip(model.parameters(), dense.parameters()):
        if old.grad is not None:
            new.grad = old.grad.clone()
    return model


def prune_once(dense, importance, ratio):
    """One MetaPruner step (global ranking) on a copy of `dense`."""
    model = _with_grads(dense)
    model.eval()
    pruner = tp.pruner.MetaPruner(
        model,
        torch.zeros(1, 1, 28, 28),
        importance=_importance(importance),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=[model.fc2 if hasattr(model, "fc2") else model.fc],
    )
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def prune_to(dense, importance, target, calib, steps):
    """Bisection on TP's global pruning ratio: smallest ratio meeting target."""
    dense = copy.deepcopy(dense)
    dense.eval()
    if importance == "taylor":
        x, y = calib
        dense.zero_grad()
        F.cross_entropy(dense(x), y).backward()
    base = macs(dense)
    lo, hi = 0.0, 0.99
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        model = prune_once(dense, importance, mid)
        if macs(model) <= target * base:
            hi, best = mid, model
        else:
            lo = mid
    if best is None:
        best = prune_once(dense, importance, hi)
    return best, hi, dense


def errors(model, x, y, batch=1000):
    model.eval()
    wrong = 0
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            pred = model(x[lo : lo + batch]).argmax(1)
            wrong += int((pred != y[lo : lo + batch]).sum())
    return wrong / len(x)


def finetune(model, x, y, epochs, lr, batch, seed):
    """Adam; epoch e visits the images in `default_rng(seed)`'s e-th
    permutation, in batches of `batch` (the Keras side does the same)."""
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


def recalibrate_bn(model, x, images, batch=512):
    """BatchNorm running statistics recomputed on `x[:images]`: PyTorch's
    cumulative average (`momentum=None`) over batches of `batch`, in
    training mode, no weight update (as `prune_budget.recalibrate_bn`)."""
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not layers or not images:
        return model
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for lo in range(0, min(images, len(x)), batch):
            model(x[lo : min(lo + batch, images)])
    for m in layers:
        m.momentum = 0.01
    model.eval()
    return model


class Server:
    def load(self, job):
        torch.manual_seed(job["seed"])
        torch.set_num_threads(job["threads"])
        data = np.load(job["data"])
        self.x, self.y = torch.tensor(data["x"]), torch.tensor(data["y"])
        self.xv, self.yv = torch.tensor(data["xv"]), torch.tensor(data["yv"])
        self.xt, self.yt = torch.tensor(data["xt"]), torch.tensor(data["yt"])
        self.x, self.xv, self.xt = (
            a.permute(0, 3, 1, 2).contiguous() for a in (self.x, self.xv, self.xt)
        )
        n = job["calibration"]
        self.calib = (self.x[:n], self.y[:n])
        weights = np.load(job["weights"])
        self.dense = build(job["kind"], weights)
        self.dense.eval()
        with torch.no_grad():
            logits = self.dense(self.xt[: len(weights["_logits"])]).numpy()
        self.base = macs(self.dense)
        return {
            "dense_test_error": errors(self.dense, self.xt, self.yt),
            "dense_val_error": errors(self.dense, self.xv, self.yv),
            "max_logit_difference": float(np.abs(logits - weights["_logits"]).max()),
            "dense_macs": self.base,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "torch_pruning": getattr(tp, "__version__", "?"),
        }

    def prune(self, job):
        start = time.perf_counter()
        self.pruned, ratio, scored = prune_to(
            self.dense, job["importance"], 1.0 / job["budget"], self.calib, job["steps"]
        )
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        prune_once(scored, job["importance"], ratio)
        step_seconds = time.perf_counter() - start
        return {
            "prune_seconds": seconds,
            "step_seconds": step_seconds,
            "tp_pruning_ratio": ratio,
            "macs_ratio": macs(self.pruned) / self.base,
            "val_error_one_shot": errors(self.pruned, self.xv, self.yv),
            "widths": {
                name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
                for name, m in self.pruned.named_modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))
            },
        }

    def finetune(self, job):
        n = job.get("samples") or len(self.x)
        start = time.perf_counter()
        finetune(
            self.pruned,
            self.x[:n],
            self.y[:n],
            job["epochs"],
            job["lr"],
            job["batch"],
            job["seed"],
        )
        recalibrate_bn(self.pruned, self.x[:n], job.get("recalibrate", 0))
        return {
            "finetune_seconds": time.perf_counter() - start,
            "val_error": errors(self.pruned, self.xv, self.yv),
            "test_error": errors(self.pruned, self.xt, self.yt),
        }


def main():
    server = Server()
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not break the protocol
    for line in sys.stdin:
        job = json.loads(line)
        if job["op"] == "quit":
            break
        answer = getattr(server, job["op"])(job)
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
