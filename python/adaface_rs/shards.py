"""Checkpoints of :class:`ShardedAdaFaceLoss`: each rank saves its own
``state_dict()`` (its weight rows, the EMA state, ``sample_step`` and its
place in the layout); this module merges ``K`` shard checkpoints into one
weight file (an :class:`AdaFaceLoss` state dict) and splits one into ``K``
(for a different number of ranks, or to start sharded training from an
unsharded checkpoint).

Command line::

    python -m adaface_rs.shards merge OUT.pt SHARD0.pt SHARD1.pt ...
    python -m adaface_rs.shards split IN.pt OUT_{rank}.pt --world-size K
        [--class-splits 3,3,2,2] [--sample-step N]

The files hold plain state dicts (``torch.save``), loaded with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

from ._sharded import even_splits

StateDict = Mapping[str, Any]
#: A state dict, or the path of a file holding one.
Source = Union[str, os.PathLike, StateDict]

_KEYS = ("weight", "batch_mean", "batch_std", "sample_step", "_extra_state")


def _load(src: Source) -> Dict[str, Any]:
    if isinstance(src, Mapping):
        return dict(src)
    return torch.load(src, map_location="cpu", weights_only=True)


def _strip(sd: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    """The module's own keys (``prefix`` removed); others are ignored."""
    out = {}
    for key, value in sd.items():
        if key.startswith(prefix) and key[len(prefix):] in _KEYS:
            out[key[len(prefix):]] = value
    return out


def merge_shards(shards: Sequence[Source], prefix: str = "") -> Dict[str, Tensor]:
    """One :class:`AdaFaceLoss` state dict (``weight`` ``C x D``,
    ``batch_mean``, ``batch_std``) from the ``K`` shard state dicts (or
    files) of one :class:`ShardedAdaFaceLoss` layout, in any order.

    Checks that the shards tile ``0..C`` exactly (no gap, no overlap), agree
    on ``C`` and ``D``, and hold the same EMA state and ``sample_step`` (the
    ranks keep them identical; a mismatch means shards of different steps).
    ``prefix`` selects the module's keys in a larger state dict (``"head."``).
    """
    if len(shards) == 0:
        raise ValueError("merge_shards needs at least one shard")
    parts = []
    for i, src in enumerate(shards):
        sd = _strip(_load(src), prefix)
        missing = [k for k in _KEYS if k not in sd]
        if missing:
            raise ValueError(f"shard {i} is not a ShardedAdaFaceLoss state dict: lacks {missing}")
        parts.append(sd)
    parts.sort(key=lambda sd: int(sd["_extra_state"]["offset"]))
    info0 = parts[0]["_extra_state"]
    total, dim = int(info0["num_classes"]), int(info0["embedding_size"])
    offset = 0
    for sd in parts:
        info = sd["_extra_state"]
        o, k = int(info["offset"]), int(info["classes"])
        if (int(info["num_classes"]), int(info["embedding_size"])) != (total, dim):
            raise ValueError("the shards come from layouts of different num_classes or embedding_size")
        if o != offset:
            what = "overlap" if o < offset else "leave a gap"
            raise ValueError(f"the shards {what} at class {min(o, offset)} (expected a shard at {offset})")
        if tuple(sd["weight"].shape) != (k, dim):
            raise ValueError(f"the shard of classes {o}..{o + k} has a weight of shape {tuple(sd['weight'].shape)}")
        for key in ("batch_mean", "batch_std", "sample_step"):
            if not torch.equal(sd[key], parts[0][key]):
                raise ValueError(
                    f"the shards hold different {key} ({sd[key].tolist()} vs {parts[0][key].tolist()}): "
                    "they were not saved at the same step"
                )
        offset += k
    if offset != total:
        raise ValueError(f"the shards cover classes 0..{offset} of {total}: some are missing")
    return {
        "weight": torch.cat([sd["weight"] for sd in parts]),
        "batch_mean": parts[0]["batch_mean"].clone(),
        "batch_std": parts[0]["batch_std"].clone(),
    }


def split_shards(
    merged: Source,
    world_size: int,
    class_splits: Optional[Sequence[int]] = None,
    sample_step: int = 0,
    prefix: str = "",
) -> List[Dict[str, Any]]:
    """``world_size`` :class:`ShardedAdaFaceLoss` state dicts, rank order,
    from one :class:`AdaFaceLoss` state dict (or file): ``weight`` split in
    contiguous rows (:func:`even_splits`, or ``class_splits``), the EMA
    state copied to every shard, ``sample_step`` set (Partial FC's step
    counter; an unsharded checkpoint has none)."""
    sd = _load(merged)
    try:
        weight, mean, std = (sd[prefix + k] for k in ("weight", "batch_mean", "batch_std"))
    except KeyError as e:
        raise ValueError(f"not an AdaFaceLoss state dict: lacks {e}") from None
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError("weight must be a 2-D tensor (num_classes x embedding_size)")
    total, dim = weight.shape
    if class_splits is None:
        splits = even_splits(total, world_size)
    else:
        splits = [int(v) for v in class_splits]
        if len(splits) != world_size or any(v < 1 for v in splits) or sum(splits) != total:
            raise ValueError(f"class_splits must be {world_size} positive sizes summing to {total}")
    out = []
    offset = 0
    for rank, k in enumerate(splits):
        out.append(
            {
                "weight": weight[offset : offset + k].clone(),
                "batch_mean": mean.clone(),
                "batch_std": std.clone(),
                "sample_step": torch.tensor([int(sample_step)], dtype=torch.int64),
                "_extra_state": {
                    "offset": offset,
                    "classes": k,
                    "num_classes": int(total),
                    "embedding_size": int(dim),
                    "rank": rank,
                    "world_size": world_size,
                },
            }
        )
        offset += k
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (see the module docs)."""
    p = argparse.ArgumentParser(prog="python -m adaface_rs.shards", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge", help="merge K shard checkpoints into one AdaFaceLoss state dict")
    m.add_argument("out")
    m.add_argument("shards", nargs="+")
    m.add_argument("--prefix", default="")
    s = sub.add_parser("split", help="split one AdaFaceLoss state dict into K shard checkpoints")
    s.add_argument("input")
    s.add_argument("out_pattern", help="output path with {rank}, e.g. head_{rank}.pt")
    s.add_argument("--world-size", type=int, required=True)
    s.add_argument("--class-splits", default=None, help="comma-separated shard sizes")
    s.add_argument("--sample-step", type=int, default=0)
    s.add_argument("--prefix", default="")
    a = p.parse_args(argv)
    if a.cmd == "merge":
        merged = merge_shards(a.shards, prefix=a.prefix)
        torch.save(merged, a.out)
        c, d = merged["weight"].shape
        print(f"merged {len(a.shards)} shards into {a.out}: weight {c} x {d}")
    else:
        if "{rank}" not in a.out_pattern:
            p.error("out_pattern must contain {rank}")
        splits = None if a.class_splits is None else [int(v) for v in a.class_splits.split(",")]
        parts = split_shards(a.input, a.world_size, splits, a.sample_step, a.prefix)
        for rank, sd in enumerate(parts):
            path = a.out_pattern.format(rank=rank)
            torch.save(sd, path)
            info = sd["_extra_state"]
            print(f"rank {rank}: classes {info['offset']}..{info['offset'] + info['classes']} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
