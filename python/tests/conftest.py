"""Shared helpers of the adaface_rs tests: golden files, the official head,
random inputs of awkward shapes."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def golden_dir() -> Path:
    """Where the golden files are: $ADAFACE_GOLDEN_DIR or <repo>/tests/golden
    (the repository carries them). Fails (never skips) when neither has
    them: the golden tests must run."""
    candidates = []
    env = os.environ.get("ADAFACE_GOLDEN_DIR")
    if env:
        candidates.append(Path(env))
    candidates.append(REPO / "tests" / "golden")
    for c in candidates:
        if c.is_dir() and any(c.glob("*_float32.json")):
            return c
    pytest.fail(f"no golden files found (looked in {[str(c) for c in candidates]})")


def _num(v: Any) -> float:
    return float(v) if isinstance(v, str) else v


def load_case(name: str) -> Dict[str, Any]:
    """A golden case file, with the "NaN"/"Infinity" strings as floats."""
    with open(golden_dir() / f"{name}.json") as f:
        case = json.load(f)
    for key in ("weight",):
        case[key] = [_num(v) for v in case[key]]
    for step in case["steps"]:
        for key, val in step.items():
            if isinstance(val, list) and key != "labels":
                step[key] = [_num(v) for v in val]
    return case


def case_names() -> List[str]:
    return sorted(p.stem[: -len("_float32")] for p in golden_dir().glob("*_float32.json"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| over the whole array, in float64."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def official_head_module():
    """The official head.py named by $ADAFACE_OFFICIAL_HEAD, or None."""
    path = os.environ.get("ADAFACE_OFFICIAL_HEAD")
    if not path:
        return None
    spec = importlib.util.spec_from_file_location("official_adaface_head", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def random_inputs(b: int, d: int, c: int, seed: int, dtype=torch.float32, device="cpu"):
    """Raw features with a spread of norms, unit-ish class rows, labels
    covering repeated and missing classes. Never zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    x *= torch.empty(b, 1, dtype=torch.float64).uniform_(0.5, 40.0, generator=g)
    w = torch.randn(c, d, generator=g, dtype=torch.float64) * 0.3
    y = torch.randint(0, c, (b,), generator=g)
    return x.to(dtype).to(device), w.to(dtype).to(device), y.to(device)


def finite(v: float) -> bool:
    return math.isfinite(v)
