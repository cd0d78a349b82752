"""Predictor training: per layer, fc1 (n_embd -> H) and fc2 (H -> n_ff), no biases, such that
``score = fc2 . relu(fc1 . x) >= threshold`` flags the neurons that truly fire.

Data: profiled FFN inputs x (the residual stream before ffn_norm) with the true activation
masks (convert/profile.py, ``samples.npz``), and the layer's firing counts.

Size (PowerInfer's adaptive predictor: sparser, more skewed layers get smaller predictors).
A neuron that almost always or almost never fires is easy; one firing half the time is hard.
With f_i the firing frequency, difficulty d = mean_i 4 f_i (1 - f_i) (1 for f = 1/2, 0 for
0 or 1) and skew s = share of the firing mass in the hottest 20% of neurons (0.2 when
uniform), H = n_embd * sqrt(d) * (1 - (s - 0.2) / 1.6), rounded up to a multiple of 16 and
clipped to [16, 2 n_embd]. 2 n_embd is the size that represents any linear rule exactly:
for relu(gate).up the neuron fires iff (gate_i * ffn_norm) . x > 0 (the RMS norm only
scales x), so fc1 = [I; -I], fc2 = [g, -g] is exact.

Start: that rule made low rank. The rank-H/2 SVD U S V' of the layer's G = gate * ffn_norm
(rows: neurons) gives fc1 = [V'; -V'], fc2 = [U S, -U S]: score = G_r x, a rank-H/2
approximation of the gate's pre-activation (its sign is what decides firing).
Training: Adam on a weighted binary cross-entropy of the logits tau (score - threshold)
(tau fixed: it scales the initial logits to unit spread; the decision score >= threshold
does not depend on it), positive weight w+ on truly firing neurons. Inputs are scaled by
their RMS for training and the scale folded back into fc1, so fc1 reads the raw x.

Recall target. Without biases a predictor cannot shift its own decisions, and the file
has one threshold for all layers, but the threshold and a per-layer positive scale of fc2
together act as per-layer thresholds: scaled score >= T  <=>  score >= T / scale. So after
training, each layer's threshold tau_l < 0 that recalls ``target_recall`` of the firing
pairs of a calibration split (plus ``margin``) is found, the file's threshold T is their median and fc2_l
is scaled by T / tau_l (``calibrate_layers``). Reports are measured on a third split.
With ``calibrate=False`` the threshold stays cfg.threshold, and training rounds repeat
with w+ doubled (up to ``max_rounds``) while the calibration split's recall is short.

numpy only (float32 BLAS); about 6 n_embd H + 6 H n_ff flops per sample and epoch.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from pyinfer.gguf_model import GGUFFile
from pyinfer.progress import bar
from pyinfer.tensor import GGMLType, dequantize


@dataclass
class TrainConfig:
    threshold: float = 0.0
    target_recall: float = 0.95
    epochs: int = 12           # per round
    max_rounds: int = 4
    batch: int = 256
    lr: float = 2e-3
    pos_weight: float = 2.0    # initial w+
    val_frac: float = 0.15     # of the samples for calibration, and as much for validation
    calibrate: bool = True     # per-layer recall thresholds folded into fc2 (see calibrate_layers)
    margin: float = 0.01       # calibrate for target_recall + margin (held-out recall varies)
    hidden: Optional[int] = None     # fixed H for every layer (None: adaptive)
    min_hidden: int = 16
    max_hidden: Optional[int] = None  # None: 2 n_embd
    seed: int = 0


@dataclass
class LayerReport:
    layer: int
    hidden: int
    recall: float             # held-out share of truly firing (token, neuron) pairs predicted
    precision: float          # held-out share of predicted pairs that truly fire
    true_sparsity: float      # share of pairs that do not fire
    predicted_sparsity: float  # share of pairs the predictor skips (what the sparse FFN saves)
    pos_weight: float
    n_train: int
    n_val: int

    def row(self) -> str:
        return (f"| {self.layer} | {self.hidden} | {self.recall:.4f} | {self.precision:.4f} | "
                f"{self.true_sparsity:.3f} | {self.predicted_sparsity:.3f} |")


TABLE_HEADER = ("| layer | H | recall | precision | true sparsity | predicted sparsity |\n"
                "|---:|---:|---:|---:|---:|---:|")


def adaptive_hidden(freq: np.ndarray, n_embd: int, min_hidden: int = 16,
                    max_hidden: Optional[int] = None) -> int:
    """Predictor size H of a layer from its neurons' firing frequencies (module docstring)."""
    f = np.clip(np.asarray(freq, dtype=np.float64), 0.0, 1.0)
    d = float(np.mean(4.0 * f * (1.0 - f)))
    top = np.sort(f)[::-1][:max(1, int(math.ceil(0.2 * len(f))))]
    s = float(top.sum() / f.sum()) if f.sum() > 0 else 0.2
    h = n_embd * math.sqrt(d) * (1.0 - (s - 0.2) / 1.6)
    h = int(math.ceil(h / 16.0)) * 16
    return int(min(max(h, min_hidden), max_hidden or 2 * n_embd))


def gate_rule(model: GGUFFile, layer: int) -> np.ndarray:
    """G [n_ff, n_embd] = ffn_gate * ffn_norm: neuron i's gate fires iff G[i] . x > 0."""
    g = model.require(f"blk.{layer}.ffn_gate.weight")
    n = model.require(f"blk.{layer}.ffn_norm.weight")
    gate = dequantize(g.data, g.type, g.ne[0] * g.ne[1]).reshape(g.ne[1], g.ne[0])
    norm = np.asarray(n.data, dtype=np.float32).reshape(-1)
    return gate * norm[None, :]


def low_rank_init(G: np.ndarray, hidden: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(fc1 [H, E], fc2 [F, H]) with fc2 . relu(fc1 . x) = G_r x, G_r the rank-H/2
    approximation of G (randomized SVD with two power iterations)."""
    r = max(1, hidden // 2)
    F, E = G.shape
    rng = np.random.default_rng(seed)
    k = min(r + 16, E, F)
    Q = np.linalg.qr(G @ rng.standard_normal((E, k), dtype=np.float32))[0]
    for _ in range(2):
        Q = np.linalg.qr(G.T @ Q)[0]
        Q = np.linalg.qr(G @ Q)[0]
    u, s, vt = np.linalg.svd(Q.T @ G, full_matrices=False)
    r = min(r, len(s))
    U = (Q @ u[:, :r]) * s[None, :r]
    V = vt[:r]
    fc1 = np.zeros((hidden, E), dtype=np.float32)
    fc2 = np.zeros((F, hidden), dtype=np.float32)
    fc1[:r], fc1[r:2 * r] = V, -V
    fc2[:, :r], fc2[:, r:2 * r] = U, -U
    return fc1, fc2


def _scores(x, fc1, fc2):
    return np.maximum(x @ fc1.T, 0.0) @ fc2.T


def evaluate(x: np.ndarray, mask: np.ndarray, fc1: np.ndarray, fc2: np.ndarray, threshold: float):
    """(recall, precision, predicted sparsity) of a predictor on (x, true mask)."""
    pred = _scores(x, fc1, fc2) >= threshold
    tp = float(np.count_nonzero(pred & mask))
    pos, npred = float(np.count_nonzero(mask)), float(np.count_nonzero(pred))
    return (tp / pos if pos else 1.0), (tp / npred if npred else 1.0), 1.0 - npred / pred.size


class _Adam:
    def __init__(self, params, lr):
        self.p, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads):
        self.t += 1
        b1, b2 = 0.9, 0.999
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for p, g, m, v in zip(self.p, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= self.lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)


def _split(n: int, frac: float, rng) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, calibration, validation) row ids: `frac` of the rows each for the last two."""
    perm = rng.permutation(n)
    k = max(1, int(round(frac * n))) if n >= 3 else 0
    return perm[2 * k:], perm[:k], perm[k:2 * k]


def train_layer(x: np.ndarray, mask: np.ndarray, fc1: np.ndarray, fc2: np.ndarray, cfg: TrainConfig,
                layer: int = 0, check: Optional[Tuple[np.ndarray, np.ndarray]] = None):
    """Fine-tune (fc1, fc2) on samples x [S, E] float32 with true masks [S, F] bool; with
    `check` = (x, mask) held out and no calibration, repeat rounds with a doubled w+ while
    its recall is below the target. Returns (fc1, fc2, final w+)."""
    rng = np.random.default_rng(cfg.seed + layer)
    scale = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
    xs = (x / scale).astype(np.float32)
    y = mask.astype(np.float32)
    W1, W2 = (fc1 * scale).astype(np.float32), fc2.astype(np.float32).copy()
    t = np.float32(cfg.threshold)
    spread = float(np.std(_scores(xs[:1024], W1, W2) - t)) or 1.0
    tau = np.float32(1.0 / spread)
    opt = _Adam([W1, W2], cfg.lr)
    w_pos = cfg.pos_weight
    rounds = 1 if cfg.calibrate or check is None else cfg.max_rounds
    for rnd in range(rounds):
        if rnd:
            w_pos *= 2.0
        for _ in range(cfg.epochs):
            order = rng.permutation(len(xs))
            for b in range(0, len(order), cfg.batch):
                idx = order[b:b + cfg.batch]
                xb, yb = xs[idx], y[idx]
                a = xb @ W1.T
                r = np.maximum(a, 0.0)
                z = tau * (r @ W2.T - t)
                sig = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))
                # d/dz of w+ y softplus(-z) + (1 - y) softplus(z), averaged over pairs
                dz = (yb * (w_pos * (sig - 1.0)) + (1.0 - yb) * sig) * (tau / yb.size)
                gW2 = dz.T @ r
                da = (dz @ W2) * (a > 0)
                gW1 = da.T @ xb
                opt.step([gW1, gW2])
        if rounds > 1 and evaluate(check[0], check[1], W1 / scale, W2, cfg.threshold)[0] >= cfg.target_recall:
            break
    return (W1 / scale).astype(np.float32), W2, w_pos


def recall_threshold(x: np.ndarray, mask: np.ndarray, fc1: np.ndarray, fc2: np.ndarray, target: float) -> float:
    """The largest score threshold (at most just below 0) at which the predictor recalls
    `target` of the truly firing pairs of (x, mask)."""
    s = _scores(x, fc1, fc2)
    pos = np.sort(s[mask])
    eps = 1e-3 * (float(np.std(s)) or 1.0)
    if pos.size == 0:
        return -eps
    k = int(np.floor((1.0 - target) * pos.size))     # at most k positives may fall below
    return float(min(pos[k], -eps))


def train_predictors(model_path: str, xs: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                     freq: Optional[Sequence[np.ndarray]] = None, cfg: Optional[TrainConfig] = None,
                     log=None, progress: bool = False):
    """Train every layer's predictor; returns (fc1s, fc2s, reports, threshold): the
    threshold to store in the file (cfg.threshold, or the calibrated one; see
    calibrate_layers). `freq`: firing frequencies per layer for the size rule (default:
    from the masks). Reports are measured on held-out samples at that threshold.
    `log(row)` gets each report's table row; `progress`: a bar on stderr (layers, ETA)."""
    cfg = cfg or TrainConfig()
    model = GGUFFile(model_path)
    fc1s, fc2s, taus, parts = [], [], [], []
    with bar(len(xs), "training predictors", "layer", progress) as b:
        for i, (x, m) in enumerate(zip(xs, masks)):
            x, m = np.asarray(x, dtype=np.float32), np.asarray(m, dtype=bool)
            tr, cal, val = _split(len(x), cfg.val_frac, np.random.default_rng(cfg.seed + 1000 + i))
            f = freq[i] if freq is not None else m.mean(axis=0)
            h = cfg.hidden or adaptive_hidden(f, x.shape[1], cfg.min_hidden, cfg.max_hidden)
            fc1, fc2 = low_rank_init(gate_rule(model, i), h, cfg.seed + i)
            fc1, fc2, w_pos = train_layer(x[tr], m[tr], fc1, fc2, cfg, i, (x[cal], m[cal]))
            if cfg.calibrate:
                taus.append(recall_threshold(x[cal], m[cal], fc1, fc2, min(1.0, cfg.target_recall + cfg.margin)))
            fc1s.append(fc1)
            fc2s.append(fc2)
            parts.append((x[val], m[val], w_pos, len(tr), h))
            b.update(1)
    threshold = cfg.threshold
    if cfg.calibrate:
        threshold = calibrate_layers(fc2s, taus)
    reports = []
    for i, ((xv, mv, w_pos, n_tr, h), fc1, fc2) in enumerate(zip(parts, fc1s, fc2s)):
        recall, precision, pred_sparsity = evaluate(xv, mv, fc1, fc2, threshold)
        reports.append(LayerReport(i, h, recall, precision, 1.0 - float(mv.mean()), pred_sparsity,
                                   w_pos, n_tr, len(xv)))
        if log is not None:
            log(reports[-1].row())
    return fc1s, fc2s, reports, threshold


def calibrate_layers(fc2s: List[np.ndarray], taus: Sequence[float]) -> float:
    """One file threshold for per-layer thresholds taus (all < 0): the file's threshold T is
    their median and layer l's fc2 is scaled by T / tau_l > 0, so that
    scaled score >= T  <=>  score >= tau_l. Scales fc2s in place; returns T."""
    T = float(np.median(taus))
    for fc2, tau in zip(fc2s, taus):
        fc2 *= np.float32(T / tau)
    return T


def write_predictor_dir(directory: str, fc1s, fc2s, threshold: float) -> List[str]:
    """PowerInfer's predictor directory: model_{i}.pt state dicts {fc1.weight [H, n_embd],
    fc2.weight [n_ff, H]} (model_{i}.npz without torch) and config.json {sparse_threshold}."""
    os.makedirs(directory, exist_ok=True)
    try:
        import torch
    except ImportError:
        torch = None
    out = []
    for i, (a, b) in enumerate(zip(fc1s, fc2s)):
        if torch is not None:
            path = os.path.join(directory, f"model_{i}.pt")
            torch.save({"fc1.weight": torch.from_numpy(np.ascontiguousarray(a)),
                        "fc2.weight": torch.from_numpy(np.ascontiguousarray(b))}, path)
        else:
            path = os.path.join(directory, f"model_{i}.npz")
            np.savez(path, **{"fc1.weight": a, "fc2.weight": b})
        out.append(path)
    path = os.path.join(directory, "config.json")
    with open(path, "w") as f:
        json.dump({"sparse_threshold": float(threshold)}, f)
    return out + [path]


def write_model_with_predictors(src: str, dst: str, fc1s, fc2s, threshold: float,
                                pred_type: GGMLType = GGMLType.F16) -> None:
    """A copy of the PowerInfer file `src` with these predictors (blk.N.fc1/fc2 replaced or
    added after the layer's last tensor) and powerinfer.sparse_threshold = threshold."""
    from gguf import GGUFValueType

    from .quant_types import encode
    from .writer import OutputFile
    f = GGUFFile(src)
    if not f.is_powerinfer:
        raise ValueError(f"{src} is not a PowerInfer file (PWRI): convert it with --sparse first")
    arch = str(f.metadata["general.architecture"])
    new = {}
    for i, (a, b) in enumerate(zip(fc1s, fc2s)):
        new[f"blk.{i}.fc1.weight"] = np.asarray(a, dtype=np.float32)
        new[f"blk.{i}.fc2.weight"] = np.asarray(b, dtype=np.float32)
    order = [t.name for t in f if t.name not in new]
    for name in new:   # after the last tensor of its layer
        prefix = name.rsplit(".", 2)[0] + "."
        last = max(j for j, n in enumerate(order) if n.startswith(prefix))
        order.insert(last + 1, name)
    out = OutputFile(dst, arch, powerinfer=True)
    try:
        w = out.gguf
        for key, field in f.reader.fields.items():
            if key.startswith("GGUF.") or key in ("general.architecture", "powerinfer.sparse_threshold"):
                continue
            vtype = field.types[0]
            w.add_key_value(key, field.contents(), vtype,
                            sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None)
        w.add_float32("powerinfer.sparse_threshold", float(threshold))
        for name in order:
            if name in new:
                out.add_tensor(name, new[name].shape[::-1], pred_type)
            else:
                t = f.get(name)
                out.add_tensor(name, t.ne, t.type)

        def produce(_, name):
            if name in new:
                return encode(new[name], pred_type)
            return np.asarray(f.get(name).data)
        out.write(produce)
        out.commit()
    except BaseException:
        out.discard()
        raise
