#!/usr/bin/env python3
"""airbench94 trained in PyTorch on the CPU, in float32, on our CIFAR-10 binary files.

A reference for deit.c's airbench teacher: it follows the recipe of dev/AIRBENCH.md (section
numbers below, "§n") with dev/convert.py's Airbench module, so that a gap between deit.c's
accuracy and airbench94's published 94.01% can be put down either to our data (JPEG-decoded
pixels, ../shared/data/cifar-10-batches-bin/PROVENANCE.txt) or to deit.c.

    /usr/bin/python3 dev/airbench_torch.py [--epochs 9.9] [--seed 0] [--threads 2]
        [--data DIR] [--train-limit N] [--test-limit N] [--save FILE.pt]

Differences from airbench94 itself (legacy/airbench94.py): float32 instead of fp16 (§3: no fp32
master weights there; its channels_last layout is kept, the faster one for oneDNN here too); CPU
random numbers; the crop is drawn per batch rather than for the whole set at the start of each
epoch (the same distribution, §7); the Lookahead snapshot is taken after the whitening init, not
just before it (in a 476-step run that only leaves ~1e-6 of the default init in the whitening
weights at step 5, §6; in a run of a few steps it would undo the whitening).
One line per epoch: the mean training loss per image, test accuracy without TTA, seconds spent
training. At the end the test accuracy at TTA levels 0, 1 and 2 (§8) and the wall time.
--save writes {"model": state_dict, "deit_config": ...}: `dev/convert.py from-torch FILE X.bin`
turns it into a deit.c teacher checkpoint.
"""
import argparse
import ctypes
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import loaded_blas, openblas_core, pick_blas  # noqa: E402
from convert import AIRBENCH_CONFIG, Airbench  # noqa: E402
from eval_torch import tta  # noqa: E402  (airbench94's infer, §8)

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # §1
BATCH = 1024
LR, WD, MOMENTUM = 11.5, 0.0153, 0.85  # §4: per 1024 examples, "decoupled" parametrisation
BIAS_SCALER, LABEL_SMOOTHING, WHITEN_BIAS_EPOCHS = 64.0, 0.2, 3
TRANSLATE, WHITEN_IMAGES, WHITEN_EPS = 2, 5000, 5e-4


def load_cifar(paths):
    """CIFAR-10 binary records (1 label byte, 1024 R, 1024 G, 1024 B) -> images normalised in
    float32 (N, 3, 32, 32) as deit.c and dev/eval_torch.py do, and int64 labels (§1)."""
    raw = np.concatenate([np.fromfile(p, np.uint8).reshape(-1, 3073) for p in paths])
    x = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32)) / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x, torch.from_numpy(raw[:, 0].astype(np.int64))


def make_net():
    """§3: PyTorch's default init, then every conv's bias zeroed and its first in_channels
    filters made identities (dirac). convert.Airbench already has BN eps 1e-12, momentum 0.4,
    frozen BN weights (1) and a frozen whitening weight."""
    net = Airbench()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                if m.bias is not None:
                    m.bias.zero_()
                nn.init.dirac_(m.weight[:m.in_channels])
    return net


def init_whitening(conv, images):
    """§2: the uncentred second moment of every 2x2 patch (stride 1) of the images, its
    eigenvectors in descending eigenvalue order scaled by 1/sqrt(lambda + 5e-4), and their negatives."""
    c = images.shape[1]
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1)  # (N, C, 31, 31, 2, 2)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4)  # a row per patch, (c, h, w) order
    moment = patches.T @ patches / len(patches)
    evals, evecs = torch.linalg.eigh(moment, UPLO="U")  # ascending; eigenvectors are the columns
    evals, evecs = evals.flip(0), evecs.T.flip(0)  # row i: the i-th largest
    w = (evecs / torch.sqrt(evals + WHITEN_EPS)[:, None]).reshape(-1, c, 2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([w, -w]))


class Lookahead:
    """§6, legacy version: slow copies of every float state_dict tensor (BN running statistics
    included); update(d): slow = d * slow + (1 - d) * net, then net := slow."""

    def __init__(self, net):
        self.slow = {k: v.clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    def update(self, net, decay):
        sd = net.state_dict()  # shares storage with the net
        for k, s in self.slow.items():
            s.lerp_(sd[k], 1 - decay)
            sd[k].copy_(s)


def lr_factor(step, total):
    """§5: 0.2 -> 1 linearly over the first int(0.23 * total) steps, then 1 -> 0.07 at `total`."""
    warm = int(total * 0.23)
    if step < warm:
        return 0.2 + 0.8 * step / warm
    return 1.0 - 0.93 * (step - warm) / (total - warm)


def train_batches(padded, labels, epoch):
    """§7: a fresh permutation each epoch, batches of 1024 (the remainder dropped); each image a
    random 32x32 crop of its reflect-padded (and, at epoch 0, randomly flipped) copy, shifts
    -2..2 on each axis; on odd epochs the whole batch is mirrored."""
    perm = torch.randperm(len(labels))
    span = 2 * TRANSLATE + 1
    for b in range(len(labels) // BATCH):
        idx = perm[b * BATCH:(b + 1) * BATCH]
        ys, xs = torch.randint(0, span, (2, BATCH)).tolist()
        x = torch.stack([padded[i, :, y:y + 32, x:x + 32] for i, y, x in zip(idx.tolist(), ys, xs)])
        x = (x.flip(-1) if epoch % 2 else x).contiguous(memory_format=torch.channels_last)
        yield x, labels[idx]


def evaluate(net, x, y, level):
    """Test accuracy (%) with airbench94's TTA level 0, 1 or 2 (§8), BN running statistics."""
    net.eval()
    with torch.no_grad():
        logits = torch.cat([tta(net, xb, level) for xb in x.split(2000)])
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=float, default=9.9, help="training epochs (§5; 9.9 = 476 steps)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--data", default=os.path.join(here, "data/cifar-10-batches-bin"))
    ap.add_argument("--train-limit", type=int, default=0, help="only the first N training images (tests)")
    ap.add_argument("--test-limit", type=int, default=0, help="only the first N test images (tests)")
    ap.add_argument("--save", help="write the final weights here (.pt, for dev/convert.py from-torch)")
    ap.add_argument("--blas", choices=["auto", "system", "openmp", "pthread"], default="auto",
                    help="as dev/bench_torch.py (auto: Debian's OpenBLAS when installed)")
    args = ap.parse_args()
    pick_blas(args)  # may re-run this script with OpenBLAS on LD_LIBRARY_PATH
    libc = ctypes.CDLL("libc.so.6")  # keep freed activations in the heap, as dev/bench_torch.py
    libc.mallopt(-1, 1 << 30), libc.mallopt(-3, 32 << 20)
    sys.stdout.reconfigure(line_buffering=True)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()

    train_x, train_y = load_cifar([os.path.join(args.data, f"data_batch_{i}.bin") for i in range(1, 6)])
    test_x, test_y = load_cifar([os.path.join(args.data, "test_batch.bin")])
    if args.train_limit:
        train_x, train_y = train_x[:args.train_limit], train_y[:args.train_limit]
    if args.test_limit:
        test_x, test_y = test_x[:args.test_limit], test_y[:args.test_limit]
    steps_per_epoch = len(train_y) // BATCH
    total = math.ceil(steps_per_epoch * args.epochs)  # §5: 48 * 9.9 -> 476
    print(f"info torch={torch.__version__} threads={torch.get_num_threads()} blas={loaded_blas()} "
          f"openblas_core={openblas_core()} seed={args.seed}")
    print(f"info train={len(train_y)} test={len(test_y)} epochs={args.epochs} steps={total} "
          f"({steps_per_epoch} per epoch) data={args.data}")
    if total < 1:
        sys.exit("airbench_torch: no training steps (need at least 1024 training images)")

    net = make_net().to(memory_format=torch.channels_last)  # §3's layout
    init_whitening(net[0], train_x[:WHITEN_IMAGES])  # §2: the first 5000, unshuffled, unaugmented
    lookahead = Lookahead(net)
    flip = torch.rand(len(train_y)) < 0.5  # §7: the epoch-0 random flip, kept for the whole run
    padded = F.pad(torch.where(flip.view(-1, 1, 1, 1), train_x.flip(-1), train_x), (TRANSLATE,) * 4,
                   mode="reflect")
    del train_x

    # §4: SGD, Nesterov, two groups; weight_decay = wd / lr so that each step decays by
    # schedule * wd in both; frozen tensors (whitening weight, BN weights) are left out.
    kilostep_scale = BATCH * (1 + 1 / (1 - MOMENTUM))
    lr, wd = LR / kilostep_scale, WD * BATCH / kilostep_scale
    lr_biases = BIAS_SCALER * lr
    trainable = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    opt = torch.optim.SGD([
        dict(params=[p for k, p in trainable if "norm" in k], lr=lr_biases, weight_decay=wd / lr_biases),
        dict(params=[p for k, p in trainable if "norm" not in k], lr=lr, weight_decay=wd / lr)],
        momentum=MOMENTUM, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, total))

    step, acc0 = 0, None
    for epoch in range(math.ceil(args.epochs)):  # §5: the last epoch stops at `total` steps
        net[0].bias.requires_grad_(epoch < WHITEN_BIAS_EPOCHS)  # §2: then its grad stays None
        net.train()
        t0, loss_sum, seen = time.time(), 0.0, 0
        for x, y in train_batches(padded, train_y, epoch):
            loss = F.cross_entropy(net(x), y, label_smoothing=LABEL_SMOOTHING, reduction="none").sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum, seen = loss_sum + loss.item(), seen + len(y)
            if step % 5 == 0:  # §6: Lookahead every 5 steps
                lookahead.update(net, 0.95 ** 5 * (step / total) ** 3)
            if step >= total:
                lookahead.update(net, 1.0)  # net := the slow weights (of the last multiple of 5)
                break
        train_s = time.time() - t0
        acc0 = evaluate(net, test_x, test_y, 0)
        print(f"epoch {epoch + 1:2d} step {step:3d} train_loss {loss_sum / seen:.4f} test_acc {acc0:.2f} "
              f"train_s {train_s:.1f} eval_s {time.time() - t0 - train_s:.1f}")

    accs = [acc0] + [evaluate(net, test_x, test_y, level) for level in (1, 2)]  # level 0: as just measured
    print(f"final test_acc tta0 {accs[0]:.2f} tta1 {accs[1]:.2f} tta2 {accs[2]:.2f} "
          f"({len(test_y)} images) wall_s {time.time() - t_start:.1f}")
    if args.save:
        sd = {k: v.contiguous() for k, v in net.state_dict().items()}  # NCHW again
        torch.save({"model": sd, "deit_config": dict(AIRBENCH_CONFIG)}, args.save)
        print(f"saved {args.save} (dev/convert.py from-torch {args.save} OUT.bin for deit.c)")


if __name__ == "__main__":
    main()
