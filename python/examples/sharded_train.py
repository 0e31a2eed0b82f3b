"""Trains a small model with the classes sharded over ``--world-size`` CPU
processes (torch.distributed, gloo): the backbone is replicated
(DistributedDataParallel), the AdaFace head is ``ShardedAdaFaceLoss`` (each
rank holds ``num_classes / world_size`` class rows), with Partial FC
sampling. Prints the loss per step (the global batch's mean, the same on
every rank) from rank 0.

    python python/examples/sharded_train.py --world-size 4 [--steps 30]

With ``--cuda`` the same code runs one process per GPU over NCCL on CUDA
tensors (``--world-size`` at most the number of GPUs; no Partial FC, which
runs on CPU tensors only for now).
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import adaface_rs


def run(rank: int, args: argparse.Namespace, init: str) -> None:
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    torch.set_num_threads(1)
    device = torch.device("cpu")
    if args.cuda:
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    backend = "nccl" if args.cuda else "gloo"
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=args.world_size)
    # Synthetic identities: each class a centre in a 16-d input space; every
    # rank draws the same centres, then its own samples.
    torch.manual_seed(0)
    centres = torch.randn(args.classes, 16)
    backbone = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, args.dim)).to(device)
    model = nn.parallel.DistributedDataParallel(backbone)
    # ddp_grad_scale: DDP averages the backbone's gradients over the ranks;
    # the features' gradient is scaled by the world size to undo it, so the
    # backbone gets the gradient of the global batch's mean loss. The head's
    # gradient is this shard's own (never averaged).
    head = adaface_rs.ShardedAdaFaceLoss(
        args.dim, args.classes, t_alpha=0.1, sample_rate=1.0 if args.cuda else args.sample_rate, seed=1,
        ddp_grad_scale=True, device=device,
    )
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=args.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(1000 + rank)
    if rank == 0:
        print(f"{args.world_size} ranks, {args.classes} classes: {head!r}", flush=True)
    start = time.perf_counter()
    for step in range(args.steps):
        labels = torch.randint(0, args.classes, (args.batch,), generator=gen)
        inputs = centres[labels] + 0.3 * torch.randn(args.batch, 16, generator=gen)
        loss = head(model(inputs.to(device)), labels.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rank == 0:
            print(f"step {step:3d} loss {loss.item():.4f}", flush=True)
    if rank == 0:
        print(f"{args.steps} steps in {time.perf_counter() - start:.2f} s", flush=True)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=32, help="per rank")
    p.add_argument("--classes", type=int, default=64)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--sample-rate", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--cuda", action="store_true", help="one GPU per rank, NCCL, CUDA tensors")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(args, f"tcp://127.0.0.1:{port}"), nprocs=args.world_size, join=True)


if __name__ == "__main__":
    main()
