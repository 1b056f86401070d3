"""The trained-model file `RUN/model.pt`: everything `emmil predict` needs, in one file.

Contents (a plain dict, written with torch.save and read back with torch.load(weights_only=True),
so loading never runs code from the file):
    format        "emmil-model"                 what the file is
    version       1                             layout version of this dict
    emmil_version str                           package version that wrote it
    config        RunConfig.to_dict()           the resolved config as trained (same as config.yaml)
    localize      LocalizeConfig as a dict      the localiser values the run used on its TEST videos:
                                                `config.localize` with lam and gate replaced by the
                                                values select_localizer chose on held-out videos
    classes       [str, ...]                    class names, in the order of the model's outputs
    rgb_dim       int                           feature width of the RGB stream (columns first)
    flow_dim      int                           feature width of the flow stream
    clip_seconds  float                         seconds per feature clip (proposal times use it)
    state_dict    {name: tensor}                EMMIL parameters and buffers, on CPU

With `localize` stored, predicting the run's own test videos reproduces its predictions.json
exactly (same device: CPU and CUDA differ in the last bits).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from emmil.config import LocalizeConfig, RunConfig, config_from_dict, validate
from emmil.data.dataset import Dataset, Video
from emmil.errors import ConfigError, DataError
from emmil.model import EMMIL

MODEL_FILE = "model.pt"
MODEL_FORMAT = "emmil-model"
MODEL_VERSION = 1
_KEYS = ("format", "version", "emmil_version", "config", "localize", "classes", "rgb_dim", "flow_dim",
         "clip_seconds", "state_dict")


class LoadedModel(NamedTuple):
    """What a model file holds, checked. A NamedTuple so `config, model, classes, *_ = load_model(p)` works."""

    config: RunConfig  # as trained (config.yaml)
    model: EMMIL  # on CPU, eval mode
    classes: tuple[str, ...]
    localize: LocalizeConfig  # the localiser values the run used on its test videos
    rgb_dim: int
    flow_dim: int
    clip_seconds: float
    path: str  # the file it was read from (or load_model's `name` for it), for messages

    @property
    def predict_config(self) -> RunConfig:
        """`config` with the localiser the run used on test: what reproduces its test predictions."""
        return dataclasses.replace(self.config, localize=self.localize)

    def describe(self) -> str:
        return (f"{self.path}: {self.config.variant} on {self.config.dataset}, {len(self.classes)} classes, "
                f"feature width {self.rgb_dim} RGB + {self.flow_dim} flow, lam {self.localize.lam}, "
                f"gate {self.localize.gate}")


def model_path(path) -> Path:
    """A run directory (-> its model.pt) or a model file path; DataError naming the path when absent."""
    p = Path(path)
    if p.is_dir():
        inner = p / MODEL_FILE
        if not inner.is_file():
            raise DataError(f"{inner}: model file not found (is {p} a finished run directory of "
                            "`emmil train`?)")
        return inner
    if not p.is_file():
        raise DataError(f"{p}: model file not found (expected a run directory or a {MODEL_FILE} file)")
    return p


def save_model(path, config: RunConfig, model: EMMIL, classes, *, clip_seconds: float,
               localize: LocalizeConfig | None = None) -> Path:
    """Write the model file atomically (PATH.tmp, then os.replace): a reader never sees half a file.
    `localize`: the localiser values used on the test videos (default: config.localize)."""
    path = Path(path)
    classes = [str(c) for c in classes]
    if len(classes) != model.num_classes:
        raise ValueError(f"save_model: {len(classes)} class names for a model with {model.num_classes} outputs")
    payload = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "emmil_version": _package_version(),
        "config": config.to_dict(),
        "localize": dataclasses.asdict(config.localize if localize is None else localize),
        "classes": classes,
        "rgb_dim": int(model.rgb_dim),
        "flow_dim": int(model.flow_dim),
        "clip_seconds": float(clip_seconds),
        # CPU copies: the file loads on a machine without the training device
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _package_version() -> str:
    from emmil import __version__

    return __version__


def _read(path: Path, shown: str) -> Any:
    """torch.load with weights_only=True: only tensors and plain containers are admitted, so a crafted
    pickle's __reduce__ payload is refused before anything runs. `shown`: the file's name in messages."""
    try:
        with warnings.catch_warnings():  # torch's note on a non-default pickle protocol: the error says it all
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, OSError, UnicodeDecodeError, zipfile.BadZipFile, MemoryError) as exc:
        raise DataError(f"{shown}: not a valid emmil model file (cannot be read as tensors and plain "
                        f"containers; nothing in it was run): {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    """The line of torch's (long, multi-paragraph) message that names the refused global, else the first."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", x).strip() for x in str(exc).splitlines()]
    lines = [x for x in lines if x]
    named = [x for x in lines if "Unsupported" in x or "GLOBAL" in x]
    text = (named or lines or [type(exc).__name__])[0].split(". ")[0]  # not torch's advice to allowlist it
    return f"{type(exc).__name__}: {text[:300]}"


def _bad(path: str, field: str, why: str) -> DataError:
    return DataError(f"{path}: not a valid emmil model file: field {field!r} {why}")


def _int_field(raw: dict, path: str, field: str) -> int:
    value = raw[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(path, field, f"must be an integer >= 1, found {value!r:.80}")
    return value


def load_model(path, *, name: str | None = None) -> LoadedModel:
    """Read and check a model file (or the model.pt of a run directory). Every defect (missing file,
    crafted or truncated pickle, missing/unknown keys, wrong shapes) -> DataError naming the file.

    `name`: what messages and `LoadedModel.path` call the file instead of its path, for a copy whose
    path means nothing to the user (`emmil predict runs:/<id>` downloads model.pt into a temporary
    folder and names it runs:/<id>/model.pt)."""
    local = model_path(path)
    path = name or str(local)  # from here on only in messages
    raw = _read(local, path)
    if not isinstance(raw, dict) or raw.get("format") != MODEL_FORMAT:
        raise DataError(f"{path}: not an emmil model file (no 'format': {MODEL_FORMAT!r} entry)")
    if raw.get("version") != MODEL_VERSION:
        raise _bad(path, "version", f"is {raw.get('version')!r:.40}; this emmil reads version {MODEL_VERSION}")
    missing = [k for k in _KEYS if k not in raw]
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if missing or unknown:
        raise DataError(f"{path}: not a valid emmil model file: missing keys {missing}, unknown keys {unknown}")
    if not isinstance(raw["config"], dict):
        raise _bad(path, "config", "must be a mapping (RunConfig.to_dict())")
    try:
        config = config_from_dict(raw["config"])
    except ConfigError as exc:
        raise DataError(f"{path}: field 'config': {exc}") from None
    if not isinstance(raw["localize"], dict):
        raise _bad(path, "localize", "must be a mapping (the localize section)")
    try:
        localize = LocalizeConfig(**raw["localize"])
        validate(dataclasses.replace(config, localize=localize))
    except TypeError as exc:
        raise _bad(path, "localize", f"has unknown or missing keys ({exc})") from None
    except ConfigError as exc:
        raise DataError(f"{path}: field 'localize': {exc}") from None
    classes = raw["classes"]
    if (not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes)
            or len(set(classes)) != len(classes)):
        raise _bad(path, "classes", "must be a non-empty list of distinct class names")
    rgb_dim, flow_dim = _int_field(raw, path, "rgb_dim"), _int_field(raw, path, "flow_dim")
    clip_seconds = raw["clip_seconds"]
    if isinstance(clip_seconds, bool) or not isinstance(clip_seconds, (int, float)) or not (
            math.isfinite(clip_seconds) and clip_seconds > 0):
        raise _bad(path, "clip_seconds", f"must be a positive number of seconds, found {clip_seconds!r:.40}")
    model = _build(path, config, raw["state_dict"], rgb_dim, flow_dim, len(classes))
    return LoadedModel(config=config, model=model, classes=tuple(classes), localize=localize, rgb_dim=rgb_dim,
                       flow_dim=flow_dim, clip_seconds=float(clip_seconds), path=path)


def _build(path: str, config: RunConfig, state: Any, rgb_dim: int, flow_dim: int, num_classes: int) -> EMMIL:
    """EMMIL of the stored shape with the stored parameters (strict: no key missing or extra)."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise _bad(path, "state_dict", "must map parameter names to tensors")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise _bad(path, "state_dict", f"tensor {name!r} holds NaN/inf")
    model = EMMIL.from_config(config.model, rgb_dim, flow_dim, num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise _bad(path, "state_dict", f"does not fit the stored config/widths/classes: "
                   f"{str(exc).splitlines()[0][:300]} ...") from None
    return model.eval()


# ---------------------------------------------------------------------------------------------- predict


def match_data(loaded: LoadedModel, dataset: Dataset) -> Dataset:
    """`dataset` checked against the model: same feature widths, the same class set (the dataset is
    returned with the model's class order, the order of its outputs) and the same clip length.
    DataError naming the model file and the data otherwise."""
    data = dataset.path or dataset.name
    if (dataset.rgb_dim, dataset.flow_dim) != (loaded.rgb_dim, loaded.flow_dim):
        raise DataError(
            f"{loaded.path}: the model takes features of width {loaded.rgb_dim} RGB + {loaded.flow_dim} flow "
            f"= {loaded.rgb_dim + loaded.flow_dim}, but {data} has {dataset.rgb_dim} RGB + {dataset.flow_dim} "
            f"flow = {dataset.rgb_dim + dataset.flow_dim}")
    if set(dataset.classes) != set(loaded.classes):
        unknown = sorted(set(dataset.classes) - set(loaded.classes))
        absent = sorted(set(loaded.classes) - set(dataset.classes))
        raise DataError(
            f"{loaded.path}: the model's {len(loaded.classes)} classes do not match the {len(dataset.classes)} "
            f"classes of {data}: classes unknown to the model {unknown[:10]}, model classes not in the "
            f"data {absent[:10]} (model: {list(loaded.classes)[:10]}, data: {list(dataset.classes)[:10]})")
    if not math.isclose(dataset.clip_seconds, loaded.clip_seconds, rel_tol=1e-9):
        raise DataError(f"{loaded.path}: the model was trained on {loaded.clip_seconds} s clips but {data} "
                        f"has {dataset.clip_seconds} s clips")
    if dataset.name != loaded.config.dataset:
        raise DataError(f"{loaded.path}: the model was trained on {loaded.config.dataset!r} but {data} "
                        f"is {dataset.name!r}")
    return dataclasses.replace(dataset, classes=loaded.classes)


def predict(loaded: LoadedModel, dataset: Dataset, videos: tuple[Video, ...], *,
            device: torch.device | str = "cpu") -> tuple[dict, list[dict[str, np.ndarray]]]:
    """(ActivityNet results JSON, per-video scores) of `videos` of a dataset that `match_data` returned:
    the same scoring and localiser calls as the run's own test evaluation (emmil.train)."""
    from emmil.train import dataset_tensor, localize_all, predict_scores

    if not videos:
        raise DataError(f"{dataset.path or dataset.name}: no videos to predict")
    dev = torch.device(device)
    model = loaded.model.to(dev)
    scores = predict_scores(model, videos, dataset_tensor(dataset, dev))
    return localize_all(loaded.predict_config, dataset, videos, scores), scores
