"""Fitting a linear head (``rstar.ppm.LinearHead``) on hidden states, full batch with AdamW:
a PPM by the Bradley-Terry loss on pairs, a value head by AlphaMath's ``MSE(tanh(v), Q)``.

The features (one hidden state a text) are computed by ``rstar.train.reward.train_head``;
here the head is fitted to them. Each fit checks its loss every ``eval_every`` epochs (the
held-out loss where ``eval_fn`` gives one, ``eval_loss`` or ``eval_mse``, else the training
loss) and stops at ``epochs`` or earlier, when :class:`rstar.train.base.Convergence` is met on
those checks; it returns the head, one row a check, and why it stopped.
"""

from __future__ import annotations

import numpy as np

from rstar.ppm import LinearHead
from rstar.train.base import Convergence, TrainingDiverged


def _checks(epochs: int, progress: bool, desc: str):
    it = range(1, epochs + 1)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=desc, unit="epoch")
    return it


def _fit(loss_fn, params, make_head, *, epochs: int, lr: float, weight_decay: float, eval_every: int, eval_fn,
         progress: bool, desc: str, criterion: Convergence | None, extra_row=None):
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history: list[dict] = []
    stopped_by = "max_epochs"
    it = _checks(epochs, progress, desc)
    for epoch in it:
        opt.zero_grad()
        loss = loss_fn()
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss.item()} at epoch {epoch}; lower --lr")
        loss.backward()
        opt.step()
        if epoch % eval_every == 0 or epoch == epochs:
            row = {"epoch": epoch, "loss": float(loss.detach())}
            if extra_row is not None:
                row.update(extra_row())
            head = make_head()
            if eval_fn is not None:
                row.update(eval_fn(head))
            history.append(row)
            if progress:
                it.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
            key = next((k for k in ("eval_loss", "eval_mse") if k in row), "loss")
            if criterion is not None and epoch < epochs and criterion.met([r[key] for r in history], epoch):
                stopped_by = "converged"
                break
    return make_head(), history, stopped_by


def fit_pair_head(xc: np.ndarray, xr: np.ndarray, weight: np.ndarray | None = None, *, epochs: int = 300,
                  lr: float = 0.01, weight_decay: float = 0.01, eval_every: int = 25, eval_fn=None,
                  progress: bool = True, seed: int = 0, criterion: Convergence | None = None
                  ) -> tuple[LinearHead, list[dict], str]:
    """Bradley-Terry on a linear head, full batch: ``-log sigmoid(r(chosen) - r(rejected))``,
    each pair weighted (rStar's 1/(pos*neg)). ``eval_fn(head) -> dict`` runs at every check
    (held-out accuracy). Stops with an error on a non-finite loss."""
    import torch

    torch.manual_seed(seed)
    mean, std = LinearHead.standardizer(np.concatenate([xc, xr]))
    zc = torch.tensor((xc - mean) / std, dtype=torch.float32)
    zr = torch.tensor((xr - mean) / std, dtype=torch.float32)
    wt = torch.tensor(weight if weight is not None else np.ones(len(xc)), dtype=torch.float32)
    wt = wt / wt.sum()
    w = torch.zeros(zc.shape[1], requires_grad=True)

    def loss_fn():
        return -(torch.nn.functional.logsigmoid((zc - zr) @ w) * wt).sum()

    def train_accuracy():
        with torch.no_grad():
            return {"train_accuracy": float(((zc - zr) @ w > 0).float().mean())}

    return _fit(loss_fn, [w], lambda: LinearHead(w.detach().numpy(), 0.0, mean, std), epochs=epochs, lr=lr,
                weight_decay=weight_decay, eval_every=eval_every, eval_fn=eval_fn, progress=progress,
                desc="train head", criterion=criterion, extra_row=train_accuracy)


def fit_value_head(x: np.ndarray, q: np.ndarray, *, epochs: int = 300, lr: float = 0.01,
                   weight_decay: float = 0.01, eval_every: int = 25, eval_fn=None, progress: bool = True,
                   seed: int = 0, criterion: Convergence | None = None) -> tuple[LinearHead, list[dict], str]:
    """AlphaMath's value loss on a linear head, full batch: ``MSE(tanh(v), Q)``."""
    import torch

    torch.manual_seed(seed)
    mean, std = LinearHead.standardizer(x)
    z = torch.tensor((x - mean) / std, dtype=torch.float32)
    target = torch.tensor(q, dtype=torch.float32)
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)

    def loss_fn():
        return torch.mean((torch.tanh(z @ w + b) - target) ** 2)

    return _fit(loss_fn, [w, b], lambda: LinearHead(w.detach().numpy(), float(b.detach()), mean, std),
                epochs=epochs, lr=lr, weight_decay=weight_decay, eval_every=eval_every, eval_fn=eval_fn,
                progress=progress, desc="train value head", criterion=criterion)
