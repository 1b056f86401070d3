"""Which video-level gate fits these features: k-fold cross-validation on the TRAINING videos only.

    .venv/bin/python bench/gate_cv.py --data-dir DIR [--dataset thumos14] [--folds 5] [--json OUT]
    .venv/bin/python bench/gate_cv.py --quick          # CI smoke: tiny semi-synthetic data

The gate (model.gate, docs/core.md) is a softmax-over-classes video classifier trained apart from
EM-MIL. This script measures, on folds of the training split (the test split is never read), the
classification mAP of the same linear model class on each video's mean clip feature fitted four
ways, so a user can tell "the data do not separate the classes" from "the fit does not find the
separation" before training anything:
  convex     emmil.train.fit_linear_mean_gate (what model.gate linear-mean does): standardised
             means, softmax cross-entropy + l2 ||W||^2, full-batch L-BFGS, for each l2 of --l2
  convex-raw the same without standardisation (the fit on the raw feature scale)
  adam-video Adam, one video per step (how the attention gate trains), --adam-epochs epochs
  adam-full  Adam on all training videos per step, --adam-steps steps
(the Adam rows at lr 1e-4 / 1e-3 and the default l2, standardised). Folds: a seeded permutation of the
training videos cut into --folds parts; mAP over the classes present, each video scored by the
fold that held it out. One JSON object (stdout or --json) and a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_L2 = "0,1e-6,1e-5,3e-5,1e-4,3e-4,1e-3"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=None, help="features (W-TALC or per-video layout)")
    p.add_argument("--dataset", default="thumos14")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the fold permutation")
    p.add_argument("--l2", default=DEFAULT_L2, help=f"comma-separated L2 weights of the convex fit (default {DEFAULT_L2})")
    p.add_argument("--adam-epochs", type=int, default=45, help="epochs of the one-video-per-step Adam fit (45: gate_epochs)")
    p.add_argument("--adam-steps", type=int, default=2000, help="steps of the full-batch Adam fit")
    p.add_argument("--json", type=Path, default=None, help="write the result here (default stdout)")
    p.add_argument("--quick", action="store_true", help="CI smoke: 24 semi-synthetic videos at dim 8, 2 folds, short fits")
    args = p.parse_args(argv)
    if args.quick:
        args.folds, args.adam_epochs, args.adam_steps = 2, 2, 20
        args.l2 = "1e-4" if args.l2 == DEFAULT_L2 else args.l2
    elif args.data_dir is None:
        p.error("--data-dir is required (or --quick)")
    if args.folds < 2:
        p.error(f"--folds {args.folds}: need at least 2")
    return args


def video_means(dataset, videos):
    """(V, D) float32 tensor: each video's mean clip feature."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([dataset.features_of(v).mean(0) for v in videos]).astype(np.float32))


def cross_validated_map(means, y, folds, fit_predict) -> float:
    """Classification mAP of `fit_predict(train_idx, test_idx) -> (len(test_idx), C) scores` over folds."""
    import numpy as np

    from emmil.evaluate import classification_map

    scores = np.zeros(tuple(y.shape), dtype=np.float64)
    for k, held in enumerate(folds):
        train = np.concatenate([f for j, f in enumerate(folds) if j != k])
        scores[held] = fit_predict(train, held)
    labels = y.numpy()
    present = labels.sum(0) > 0
    return float(classification_map(scores[:, present], labels[:, present]))


def convex(means, y, l2: float, standardise: bool):
    import torch

    from emmil.model import LinearMeanGate, make_packing
    from emmil.train import fit_linear_mean_gate

    def fit_predict(train, held):
        gate = LinearMeanGate(means.shape[1], y.shape[1])
        fit_linear_mean_gate(gate, means[train], y[train], l2, standardise=standardise)
        with torch.no_grad():
            return gate(means[held], make_packing([1] * len(held))).softmax(1).double().numpy()
    return fit_predict


def adam(means, y, lr: float, *, epochs: int = 0, steps: int = 0, seed: int = 0):
    """Adam from zero on standardised means: one video per step for `epochs`, or full batch for `steps`."""
    import torch

    from emmil.losses import video_classifier_loss

    def fit_predict(train, held):
        mu, sd = means[train].mean(0), means[train].std(0).clamp_min(1e-6)
        z = (means - mu) / sd
        fc = torch.nn.Linear(means.shape[1], y.shape[1])
        torch.nn.init.zeros_(fc.weight)
        torch.nn.init.zeros_(fc.bias)
        opt = torch.optim.Adam(fc.parameters(), lr=lr)
        order = torch.Generator().manual_seed(seed)
        batches = ([[int(i)] for _ in range(epochs) for i in torch.randperm(len(train), generator=order)]
                   if epochs else [list(range(len(train)))] * steps)
        zt, yt = z[train], y[train]
        for rows in batches:
            opt.zero_grad()
            video_classifier_loss(fc(zt[rows]), yt[rows]).backward()
            opt.step()
        with torch.no_grad():
            return fc(z[held]).softmax(1).double().numpy()
    return fit_predict


def load(args):
    if args.quick:
        from emmil.data.synth import make_synthetic

        return make_synthetic(args.dataset, dim=8, seed=0, max_videos=24)
    from emmil.data.loading import load_dataset

    return load_dataset(args.dataset, args.data_dir)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from emmil.config import TrainConfig
    from emmil.errors import ConfigError, DataError

    try:
        l2s = [float(x) for x in args.l2.split(",")]
    except ValueError:
        print(f"error: --l2 {args.l2!r}: expected comma-separated numbers", file=sys.stderr)
        return 2
    try:
        dataset = load(args)
    except (ConfigError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    videos = dataset.in_subset(dataset.train_subset)
    if len(videos) < args.folds:
        print(f"error: {len(videos)} training videos in {dataset.path or dataset.name}: fewer than --folds {args.folds}",
              file=sys.stderr)
        return 2
    means = video_means(dataset, videos)
    y = torch.from_numpy(dataset.label_matrix(videos))
    folds = np.array_split(np.random.default_rng(args.seed).permutation(len(videos)), args.folds)
    default_l2 = TrainConfig().gate_l2
    rows = []
    fits = [(f"convex l2={l2:g}", convex(means, y, l2, True)) for l2 in l2s]
    fits += [(f"convex-raw l2={default_l2:g}", convex(means, y, default_l2, False))]
    fits += [(f"adam-video lr={lr:g} epochs={args.adam_epochs}", adam(means, y, lr, epochs=args.adam_epochs))
             for lr in (1e-4, 1e-3)]
    fits += [(f"adam-full lr={lr:g} steps={args.adam_steps}", adam(means, y, lr, steps=args.adam_steps))
             for lr in (1e-4, 1e-3)]
    for i, (name, fit_predict) in enumerate(fits, 1):
        value = cross_validated_map(means, y, folds, fit_predict)
        rows.append({"fit": name, "cv_cls_mAP": value})
        print(f"[{i}/{len(fits)}] {name}: {100 * value:.1f} %", file=sys.stderr, flush=True)
    result = {"dataset": dataset.name, "source": dataset.source, "training_videos": len(videos),
              "folds": args.folds, "fold_seed": args.seed, "rows": rows,
              "note": "classification mAP on held-out folds of the TRAINING videos; the test split is not read"}
    text = json.dumps(result, indent=1)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
