#!/usr/bin/env python3
"""Evaluate a deit.c model in PyTorch on the CIFAR test set, preprocessed exactly as deit.c does
(pixel / 255, then (x - mean) / std per channel, all in float32; CHW from the binary file's R, G,
B planes). The model is dev/reference.py's (float32, eval mode) for a student or a ResNet, and
dev/convert.py's Airbench for an airbench teacher: a distilled student outputs the mean of its two
heads' logits, a ResNet and airbench use their BatchNorm running statistics.

    python3 dev/eval_torch.py CKPT.bin|CKPT.pt [--data DIR] [--deit-logits FILE] [--heads N]
                              [--tta 0|1|2] [--tol T]

Prints "torch: N correct of M (XX.XX%)". With --deit-logits (written by `./deit eval --ckpt X
--logits FILE`) it also counts deit.c's correct predictions from those logits and lists where the
two argmaxes differ, with the gap between the top two logits there (a near-tie is the only
legitimate reason for a difference: the two sum in different orders). --tol T also fails when
max |logit difference| > T * max |logit| (relative to the largest logit, as dev/reference.py).

--tta is airbench94's test-time augmentation (its `infer`), for any model, averaging logits:
0 one plain forward; 1 the image and its mirror, 1/2 each; 2 (airbench94's default) 1/2 level 1
of the image + 1/2 the mean of level 1 of two one-pixel translations (reflect-pad by 1, crops
[0:32, 0:32] and [2:34, 2:34]): 6 forward passes.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert  # noqa: E402
import reference  # noqa: E402

CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def load_test_set(data_dir):
    """-> (images float32 (N, 3, 32, 32) normalised as deit.c, labels int64 (N,))"""
    if os.path.exists(os.path.join(data_dir, "test_batch.bin")):
        path, label_bytes, (mean, std) = os.path.join(data_dir, "test_batch.bin"), 1, CIFAR10
    elif os.path.exists(os.path.join(data_dir, "test.bin")):
        path, label_bytes, (mean, std) = os.path.join(data_dir, "test.bin"), 2, CIFAR100
    else:
        raise SystemExit(f"eval_torch: {data_dir}: no test_batch.bin (CIFAR-10) or test.bin (CIFAR-100)")
    raw = np.fromfile(path, dtype=np.uint8)
    rec = label_bytes + 3072
    if raw.size % rec:
        raise SystemExit(f"eval_torch: {path}: not a whole number of {rec}-byte records")
    raw = raw.reshape(-1, rec)
    labels = raw[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: the fine label
    x = raw[:, label_bytes:].reshape(-1, 3, 32, 32).astype(np.float32)
    m = np.array(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.array(std, np.float32).reshape(1, 3, 1, 1)
    x = (x / np.float32(255.0) - m) / s  # the same float32 operations as deit.c's make_batch
    return x.astype(np.float32), labels


def load_model(path, dtype=torch.float32, heads=None):
    """-> (config, model in eval mode): Airbench for an airbench teacher, else reference.py's."""
    cfg, sd = convert.load_any(path, heads)
    if cfg["kind"] == "teacher" and cfg.get("arch") == "airbench":
        return cfg, convert.load_airbench(cfg, sd, dtype)
    return reference.load_model(path, dtype, heads)


def tta(f, x, level):
    """airbench94's infer(): level 0 f(x); 1 with the mirror; 2 also two one-pixel translations."""
    def mirror(x):
        return 0.5 * f(x) + 0.5 * f(x.flip(-1))
    if level == 0:
        return f(x)
    if level == 1:
        return mirror(x)
    H, W = x.shape[-2:]
    p = F.pad(x, (1,) * 4, "reflect")
    translated = torch.stack([mirror(p[:, :, 0:H, 0:W]), mirror(p[:, :, 2:H + 2, 2:W + 2])]).mean(0)
    return 0.5 * mirror(x) + 0.5 * translated


def torch_logits(model, images, batch=500, tta_level=0):
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(tta(model.inference, torch.from_numpy(images[i:i + batch]), tta_level).numpy())
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ckpt")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--data", default=os.environ.get("DEIT_DATA", os.path.join(here, "data/cifar-10-batches-bin")))
    ap.add_argument("--deit-logits", help="deit.c's logits of the same model (./deit eval --logits FILE)")
    ap.add_argument("--heads", type=int, help="heads of a student .pt without deit_config")
    ap.add_argument("--limit", type=int, default=0, help="only the first N test images")
    ap.add_argument("--tta", type=int, choices=(0, 1, 2), default=0,
                    help="airbench94's test-time augmentation level (default 0: none)")
    ap.add_argument("--tol", type=float, help="with --deit-logits: fail when max |logit difference| > "
                                              "TOL * max |logit|")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        cfg, model = load_model(args.ckpt, torch.float32, args.heads)
    except convert.ConvertError as e:
        raise SystemExit(f"eval_torch: {e}")
    images, labels = load_test_set(args.data)
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    logits = torch_logits(model, images, tta_level=args.tta)
    pred = logits.argmax(axis=1)  # first maximum on ties, as deit.c's argmax
    n, correct = len(labels), int((pred == labels).sum())
    what = cfg["kind"] + (f" {cfg.get('arch', 'resnet')}" if cfg["kind"] == "teacher" else "")
    print(f"torch: {correct} correct of {n} ({100.0 * correct / n:.2f}%) [{args.ckpt}, {what}, tta {args.tta}]")
    if args.deit_logits:
        lc = np.fromfile(args.deit_logits, dtype="<f4")
        if lc.size != logits.size:
            lc = lc[:logits.size] if args.limit and lc.size > logits.size else None
        if lc is None:
            raise SystemExit(f"eval_torch: {args.deit_logits}: size does not match {logits.shape}")
        lc = lc.reshape(logits.shape)
        pc = lc.argmax(axis=1)
        cc = int((pc == labels).sum())
        diff = np.nonzero(pc != pred)[0]
        err = float(np.abs(lc - logits).max())
        scale = max(float(np.abs(logits).max()), 1e-30)
        print(f"deit.c: {cc} correct of {n} ({100.0 * cc / n:.2f}%); max |logit difference| "
              f"{err:.2e}, {err / scale:.2e} of max |logit| {scale:.2e}; argmax differs on {len(diff)} image(s)")
        for i in diff[:20]:
            top = np.sort(logits[i])[-2:]
            print(f"  image {i}: label {labels[i]}, deit.c {pc[i]}, torch {pred[i]}, top-2 gap {top[1] - top[0]:.2e}")
        print(f"eval_torch: correct counts {'equal' if cc == correct else f'differ by {abs(cc - correct)}'}")
        ok = cc == correct
        if args.tol is not None:
            within = err <= args.tol * scale
            print(f"eval_torch: logits {'within' if within else 'NOT within'} tolerance ({err / scale:.2e} "
                  f"{'<=' if within else '>'} {args.tol:g} relative)")
            ok = ok and within
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
