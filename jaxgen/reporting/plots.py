"""Plots of a run: loss curves from metrics.jsonl and the latent space coloured by label."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxgen import atomic
from jaxgen.reporting import writer


def _pyplot():
    import matplotlib  # noqa: PLC0415 (only when plotting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def loss_series(records: list[dict], keys: tuple[str, ...] = ("loss", "elbo", "nll")) -> list[tuple]:
    """(label, steps, values, split) of each curve `loss_curves` draws: per split and key, -ELBO so that every
    curve goes down, and the NLL once per nll_k (the final eval takes more importance samples: its drop is not
    training progress). Records of --mode=eval ('by') are left out."""
    out = []
    for split in ("train", "validation", "eval"):
        for key in keys:
            rows = [r for r in records if r["split"] == split and isinstance(r.get(key), float)
                    and "by" not in r]  # the training run's history, not a --mode=eval of a step
            group = (lambda r: r.get("nll_k")) if key == "nll" else (lambda r: None)
            for k in sorted({group(r) for r in rows}, key=lambda k: (k is None, k or 0)):
                pts = [(r["step"], r[key]) for r in rows if group(r) == k]
                label = f"{split} {'-elbo' if key == 'elbo' else key}" + (f" (k={k:g})" if k is not None else "")
                sign = -1.0 if key == "elbo" else 1.0
                out.append((label, [p[0] for p in pts], [sign * p[1] for p in pts], split))
    return out


def loss_curves(metrics_path: Path, out: Path, keys: tuple[str, ...] = ("loss", "elbo", "nll")) -> Path | None:
    """Train loss and the validation and test (eval) ELBO/NLL against step, from metrics.jsonl (`loss_series`).
    Returns the PNG path (None: no data)."""
    records = writer.read(metrics_path)
    if not records:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, steps, values, split in loss_series(records, keys):
        ax.plot(steps, values, marker=None if split == "train" else "o", ms=3, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("nats per image")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.write_with(out, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return Path(out)


def latent_scatter(mu: np.ndarray, labels: np.ndarray, out: Path) -> Path:
    """The posterior means [N, D] in 2-D (the first two principal components when D > 2), coloured by label: one
    colour per class with a legend up to 20 classes (none for a dataset without labels, all 0), else a colour scale."""
    mu = np.asarray(mu, np.float64)
    if mu.shape[1] > 2:
        centred = mu - mu.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy, title = centred @ vt[:2].T, f"posterior means, first 2 of {mu.shape[1]} principal components"
    else:
        xy, title = np.pad(mu, ((0, 0), (0, 2 - mu.shape[1]))), "posterior means"
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(classes) <= 20:
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, label in enumerate(classes):
            at = labels == label
            ax.scatter(xy[at, 0], xy[at, 1], color=cmap(i), s=6, alpha=0.8, label=str(label))
        if len(classes) > 1:
            ax.legend(title="label", fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    else:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap="viridis", s=6, alpha=0.8)
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic.write_with(out, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return Path(out)


def gan_curves(metrics_path: Path, out: Path) -> Path | None:
    """Two panels against step from metrics.jsonl's train records: D and G losses; D's mean output on reals
    D(x) and on fakes D(G(z)) (logits or critic scores; probabilities too when the loss reports them)."""
    records = [r for r in writer.read(metrics_path) if r["split"] == "train"]
    if not records:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = ((axes[0], ("d_loss", "g_loss", "reg"), "loss"),
              (axes[1], ("d_real", "d_fake", "p_real", "p_fake"), "D output"))
    for ax, keys, ylabel in panels:
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), float)]
            if pts:
                s, v = zip(*pts)
                label = {"d_real": "D(x)", "d_fake": "D(G(z))", "p_real": "sigmoid D(x)",
                         "p_fake": "sigmoid D(G(z))"}.get(key, key)
                ax.plot(s, v, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic.write_with(out, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
    return Path(out)
