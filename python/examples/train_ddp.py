"""Train with DistributedDataParallel straight from a bucket, and resume from the last checkpoint.

    torchrun --nproc_per_node 8 train_ddp.py \
        --data oss://my-bucket/datasets/train --ckpt oss://my-bucket/ckpt --region cn-hangzhou

Credentials come from the environment (OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET), the ossfs
password files or the ECS RAM role, as for the pai-mount CLI. Run it again after a stop: it
continues from the checkpoint, mid-epoch, without reading a sample twice.
"""

import argparse
import json

import torch
import torch.distributed as dist
import torch.nn as nn

import pai_mount as pm


def decode(sample):
    # Replace with real decoding (an image, a token sequence...). Here: the first 64 bytes are
    # the features, and the label is made up from the size.
    x = torch.frombuffer(bytearray(sample.data[:64]).ljust(64, b"\0"), dtype=torch.uint8).float() / 255
    return x, len(sample.data) % 10


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="oss://bucket/prefix of the samples")
    p.add_argument("--ckpt", required=True, help="oss://bucket/prefix for checkpoints")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--region")
    p.add_argument("--endpoint")
    p.add_argument("--path-style", action="store_true")
    p.add_argument("--stop-after", type=int, help="checkpoint and stop after this many steps")
    a = p.parse_args()
    store = {"region": a.region, "endpoint": a.endpoint, "path_style": a.path_style}
    store = {k: v for k, v in store.items() if v}

    dist.init_process_group("gloo")  # "nccl" on GPUs
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Linear(64, 10))
    optim = torch.optim.SGD(model.parameters(), lr=0.1)

    # The one line that changes in a training script: the dataset and its loader.
    ds = pm.IterableDataset(a.data, shuffle="global", seed=17, transform=decode, **store)
    loader = pm.DataLoader(ds, batch_size=a.batch_size, num_workers=a.workers, persistent_workers=a.workers > 0)

    latest = f"{a.ckpt.rstrip('/')}/latest.pt"
    step, start_epoch = 0, 0
    try:
        with pm.open(latest, "rb", **store) as f:
            ckpt = torch.load(f, weights_only=True)
        model.module.load_state_dict(ckpt["model"])
        optim.load_state_dict(ckpt["optim"])
        loader.load_state_dict(ckpt["data"])  # every rank is at the same place under DDP
        step, start_epoch = ckpt["step"], ckpt["data"]["epoch"]
        if rank == 0:
            print(f"resumed at step {step}: epoch {start_epoch}, {ckpt['data']['consumed']} samples in", flush=True)
    except pm.NotFoundError:
        pass

    def save():
        if rank == 0:  # close() returns once the checkpoint is in the bucket
            with pm.open(latest, "wb", **store) as f:
                torch.save({"model": model.module.state_dict(), "optim": optim.state_dict(),
                            "data": loader.state_dict(), "step": step}, f)
        dist.barrier()

    for epoch in range(start_epoch, a.epochs):
        ds.set_epoch(epoch)  # keeps the loaded position when it is this epoch
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optim.zero_grad()
            loss.backward()
            optim.step()
            step += 1
            if a.stop_after and step == a.stop_after:
                save()
                dist.destroy_process_group()
                return
        save()
    if rank == 0:
        print(json.dumps({"steps": step, "epochs": a.epochs}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
