#!/usr/bin/env python3
"""deit.c checkpoints <-> PyTorch state_dicts (torch + numpy only).

    python3 dev/convert.py to-torch   IN.bin OUT.pt
    python3 dev/convert.py from-torch IN.pt  OUT.bin [--heads N] [--img-size S]
    python3 dev/convert.py selftest   (the converter on synthetic files: no deit.c, no data)

A deit.c checkpoint is 256 little-endian int32 (the header, unused entries 0) followed by the
parameters as float32 (README, "Checkpoint formats"). The magic in header[0] says which model:

  student (20201223) <-> timm's VisionTransformer / DistilledVisionTransformer names
      patch_embed.proj.{weight,bias}, cls_token, dist_token, pos_embed,
      blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2 .{weight,bias},
      norm.{weight,bias}, head.{weight,bias}, head_dist.{weight,bias}
  teacher (20151210), header[1] the version:
      1: a ResNet. [2] img_size, [3] in_chans, [4] num_classes, [5] stages S, [6] blocks per
         stage, [7 .. 7+S-1] widths, every other entry 0.
      2: the same fields plus [15] arch: 0 = ResNet (tensors exactly as version 1), 1 = airbench.
         deit.c writes version 1 for a ResNet and version 2 / arch 1 for airbench; this script
         reads all three (v1, v2/0, v2/1) and writes back the version it read.
    ResNet <-> torchvision's ResNet names
      conv1.weight, bn1.*, layer{s}.{b}.conv1.weight, .bn1.*, .conv2.weight, .bn2.*,
      .downsample.0.weight, .downsample.1.*, fc.{weight,bias}
    airbench <-> the names of airbench94's own nn.Sequential (KellerJordan/cifar10-airbench,
      make_net), so a state_dict of that net loads here and ours loads there; class Airbench below
      is that net:
      0.{weight,bias}            whitening conv, (W, in_chans, 2, 2) and (W,), W = 8 * in_chans
                                 (deit.c: whiten_w, whiten_b); 1 is the GELU
      {2,3,4}.conv1.weight       stage s = 0, 1, 2 (module 2 + s): conv3x3 (w, c_in, 3, 3)
      {2,3,4}.norm1.*            its BatchNorm (deit.c bn1_gamma, bn1_beta, bn1_running_mean,
                                 bn1_running_var = weight, bias, running_mean, running_var)
      {2,3,4}.conv2.weight, .norm2.*   the second conv3x3 (w, w, 3, 3) and its BatchNorm
      7.weight                   the linear head (num_classes, widths[2]), no bias (deit.c fc_w);
                                 5 = MaxPool2d(3), 6 = Flatten, 8 = the 1/9 scale
    (bn.* = weight, bias, running_mean, running_var, num_batches_tracked)

to-torch writes {"model": state_dict, "deit_config": {...}} (the layout of the official DeiT
checkpoints, plus the deit.c header as a dict; a teacher's has "version" and "arch": "resnet" or
"airbench"), so from-torch can rebuild the exact header: deit.c -> .pt -> deit.c is byte for
byte identical. from-torch also reads a plain state_dict (or {"model": ...} / {"state_dict": ...}
without deit_config) and infers the configuration from the shapes (a ResNet becomes version 1,
airbench version 2); the number of attention heads cannot be inferred (--heads, default
dim // 64), nor a ResNet's input size (--img-size, default 32; airbench's is always 32).

Also a library: read_bin(path) -> (config, {deit.c tensor name: np.ndarray}), to_state_dict /
from_state_dict, load_any(path) and, where torch imports, the module Airbench; used by
dev/reference.py, dev/eval_torch.py and dev/bench_torch.py.
"""
import argparse
import os
import sys
from collections import OrderedDict

import numpy as np

try:  # the module (Airbench) needs torch; reading and writing .bin files does not
    import torch
    import torch.nn as nn
except ImportError:
    torch = nn = None

HEADER_INTS = 256
STUDENT_MAGIC, STUDENT_VERSION = 20201223, 1
TEACHER_MAGIC, TEACHER_VERSION = 20151210, 1  # TEACHER_VERSION: what a ResNet is written as by deit.c
TEACHER_VERSIONS = (1, 2)
TEACHER_MAX_STAGES = 8  # header[7 .. 7+S-1] holds the widths; deit.c allows a few stages
TEACHER_ARCH_ENTRY = 15  # version 2: header[15] = arch
TEACHER_ARCHS = ("resnet", "airbench")  # index = the arch number in header[15]
AIRBENCH_CONFIG = {"kind": "teacher", "version": 2, "arch": "airbench", "img_size": 32, "in_chans": 3,
                   "num_classes": 10, "stages": 3, "blocks": 1, "widths": [64, 256, 256]}  # airbench94
AIRBENCH_BN_EPS, AIRBENCH_SCALE = 1e-12, 1.0 / 9.0
STUDENT_KEYS = ["img_size", "patch_size", "in_chans", "num_classes", "dim", "depth", "heads", "mlp_hidden",
                "dist_token"]


class ConvertError(Exception):
    pass


# ---- the deit.c side: header <-> config, tensor tables ------------------------------------------

def student_tensor_table(c):
    """(deit.c name, shape) in checkpoint order; absent tensors (no dist token) left out."""
    D, L, H, C = c["dim"], c["depth"], c["mlp_hidden"], c["num_classes"]
    K = c["in_chans"] * c["patch_size"] ** 2
    N = (c["img_size"] // c["patch_size"]) ** 2
    T = 1 + c["dist_token"] + N
    dt = c["dist_token"]
    t = [("patch_w", (D, K)), ("patch_b", (D,)), ("cls_token", (D,))]
    if dt:
        t.append(("dist_token", (D,)))
    t += [("pos_embed", (T, D)), ("ln1_w", (L, D)), ("ln1_b", (L, D)), ("qkv_w", (L, 3 * D, D)),
          ("qkv_b", (L, 3 * D)), ("proj_w", (L, D, D)), ("proj_b", (L, D)), ("ln2_w", (L, D)),
          ("ln2_b", (L, D)), ("fc1_w", (L, H, D)), ("fc1_b", (L, H)), ("fc2_w", (L, D, H)), ("fc2_b", (L, D)),
          ("lnf_w", (D,)), ("lnf_b", (D,)), ("head_w", (C, D)), ("head_b", (C,))]
    if dt:
        t += [("head_dist_w", (C, D)), ("head_dist_b", (C,))]
    return t


def teacher_blocks(c):
    """[(stage, block, cin, cout, stride, has_shortcut)] in checkpoint order, as teacher_build."""
    out, cin = [], c["widths"][0]
    for s in range(c["stages"]):
        for b in range(c["blocks"]):
            stride = 2 if (s > 0 and b == 0) else 1
            cout = c["widths"][s]
            out.append((s, b, cin, cout, stride, stride != 1 or cin != cout))
            cin = cout
    return out


def _convbn(conv, bn, cout, cin, k):
    return [(conv, (cout, cin, k, k))] + [(f"{bn}.{x}", (cout,)) for x in
                                          ("weight", "bias", "running_mean", "running_var")]


def teacher_tensor_table(c):
    """(PyTorch name, shape) in checkpoint order, for either teacher architecture."""
    return airbench_tensor_table(c) if c.get("arch", "resnet") == "airbench" else resnet_tensor_table(c)


def airbench_tensor_table(c):
    """(airbench94 name, shape) in checkpoint order: whitening conv, 3 x (conv1, bn1, conv2, bn2), head."""
    Ci = c["in_chans"]
    W = 8 * Ci  # 2 * in_chans * 2 * 2: the 2x2 patch's eigenvectors and their negatives
    t = [("0.weight", (W, Ci, 2, 2)), ("0.bias", (W,))]
    cin = W
    for s, w in enumerate(c["widths"]):
        m = s + 2  # the ConvGroups are modules 2, 3, 4 of the Sequential
        t += _convbn(f"{m}.conv1.weight", f"{m}.norm1", w, cin, 3)
        t += _convbn(f"{m}.conv2.weight", f"{m}.norm2", w, w, 3)
        cin = w
    t.append(("7.weight", (c["num_classes"], c["widths"][-1])))
    return t


def resnet_tensor_table(c):
    """(torchvision name, shape) in checkpoint order. BN = weight, bias, running_mean, running_var."""
    t = _convbn("conv1.weight", "bn1", c["widths"][0], c["in_chans"], 3)
    for s, b, cin, cout, stride, sc in teacher_blocks(c):
        p = f"layer{s + 1}.{b}"
        t += _convbn(f"{p}.conv1.weight", f"{p}.bn1", cout, cin, 3)
        t += _convbn(f"{p}.conv2.weight", f"{p}.bn2", cout, cout, 3)
        if sc:
            t += _convbn(f"{p}.downsample.0.weight", f"{p}.downsample.1", cout, cin, 1)
    t += [("fc.weight", (c["num_classes"], c["widths"][c["stages"] - 1])), ("fc.bias", (c["num_classes"],))]
    return t


def check_student_config(c):
    for k in STUDENT_KEYS:
        if not isinstance(c.get(k), int):
            raise ConvertError(f"student config: {k} missing or not an integer")
    if c["img_size"] < 1 or c["patch_size"] < 1 or c["img_size"] % c["patch_size"]:
        raise ConvertError(f"student config: img_size {c['img_size']} not divisible by patch_size {c['patch_size']}")
    if c["heads"] < 1 or c["dim"] % c["heads"]:
        raise ConvertError(f"student config: dim {c['dim']} is not divisible by heads {c['heads']}")
    if c["dist_token"] not in (0, 1):
        raise ConvertError(f"student config: dist_token must be 0 or 1, not {c['dist_token']}")
    for k in ("in_chans", "num_classes", "dim", "depth", "mlp_hidden"):
        if c[k] < 1:
            raise ConvertError(f"student config: {k} = {c[k]} must be positive")


def normalise_teacher_config(c):
    """A teacher config from a .pt written before airbench existed has no "arch": a ResNet, and
    then no "version" means 1; an airbench config without "version" is version 2."""
    c.setdefault("arch", "resnet")
    c.setdefault("version", TEACHER_VERSION if c["arch"] == "resnet" else 2)
    return c


def check_teacher_config(c):
    for k in ("img_size", "in_chans", "num_classes", "stages", "blocks"):
        if not isinstance(c.get(k), int) or c[k] < 1:
            raise ConvertError(f"teacher config: {k} missing or not a positive integer")
    if c["stages"] > TEACHER_MAX_STAGES:
        raise ConvertError(f"teacher config: {c['stages']} stages, at most {TEACHER_MAX_STAGES}")
    w = c.get("widths")
    if not isinstance(w, (list, tuple)) or len(w) != c["stages"] or not all(isinstance(x, int) and x > 0 for x in w):
        raise ConvertError(f"teacher config: widths must be {c['stages']} positive integers, not {w!r}")
    arch, version = c.get("arch", "resnet"), c.get("version", TEACHER_VERSION)
    if arch not in TEACHER_ARCHS:
        raise ConvertError(f"teacher config: arch must be one of {', '.join(TEACHER_ARCHS)}, not {arch!r}")
    if version not in TEACHER_VERSIONS or (version == 1 and arch != "resnet"):
        raise ConvertError(f"teacher config: version {version!r} with arch {arch}: a ResNet is version 1 or 2, "
                           "airbench version 2")
    if arch == "airbench" and (c["stages"], c["blocks"], c["img_size"]) != (3, 1, 32):
        raise ConvertError(f"teacher config: airbench has 3 stages of 1 block on 32x32 images (the pooling "
                           f"31 -> 15 -> 7 -> 3 -> 1), not stages {c['stages']}, blocks {c['blocks']}, "
                           f"img_size {c['img_size']}")


def header_to_config(h, path):
    magic, version = int(h[0]), int(h[1])
    if magic == STUDENT_MAGIC:
        if version != STUDENT_VERSION:
            raise ConvertError(f"{path}: student checkpoint version {version}, this script reads {STUDENT_VERSION}")
        c = {"kind": "student", "version": version}
        c.update({k: int(h[2 + i]) for i, k in enumerate(STUDENT_KEYS)})
        used = 2 + len(STUDENT_KEYS)
        check_student_config(c)
    elif magic == TEACHER_MAGIC:
        if version not in TEACHER_VERSIONS:
            raise ConvertError(f"{path}: teacher checkpoint version {version}, this script reads 1 (ResNet) and "
                               "2 (header[15]: 0 ResNet, 1 airbench)")
        arch = 0
        if version == 2:
            arch = int(h[TEACHER_ARCH_ENTRY])
            if not 0 <= arch < len(TEACHER_ARCHS):
                raise ConvertError(f"{path}: teacher checkpoint version 2 with arch {arch} in header[15]; this script "
                                   "knows 0 (ResNet) and 1 (airbench)")
        S = int(h[5])
        if S < 1 or S > TEACHER_MAX_STAGES:
            raise ConvertError(f"{path}: stages {S} out of range [1, {TEACHER_MAX_STAGES}]")
        c = {"kind": "teacher", "version": version, "arch": TEACHER_ARCHS[arch], "img_size": int(h[2]),
             "in_chans": int(h[3]), "num_classes": int(h[4]), "stages": S, "blocks": int(h[6]),
             "widths": [int(x) for x in h[7:7 + S]]}
        used = 7 + S
        try:
            check_teacher_config(c)
        except ConvertError as e:
            raise ConvertError(f"{path}: {e}") from None
        if version == 2:  # the arch entry is not one of the zeros checked below
            h = h.copy()
            h[TEACHER_ARCH_ENTRY] = 0
    else:
        raise ConvertError(f"{path}: not a deit.c checkpoint (magic {magic}; student {STUDENT_MAGIC}, "
                           f"teacher {TEACHER_MAGIC})")
    if np.any(h[used:] != 0):
        extra = " other than [15]" if magic == TEACHER_MAGIC and version == 2 else ""
        raise ConvertError(f"{path}: header entries after [{used - 1}]{extra} are not all 0 (not version {version} "
                           "of this format)")
    return c


def config_to_header(c):
    h = np.zeros(HEADER_INTS, dtype="<i4")
    if c["kind"] == "student":
        check_student_config(c)
        h[0], h[1] = STUDENT_MAGIC, STUDENT_VERSION
        for i, k in enumerate(STUDENT_KEYS):
            h[2 + i] = c[k]
    elif c["kind"] == "teacher":
        check_teacher_config(c)
        version, arch = c.get("version", TEACHER_VERSION), c.get("arch", "resnet")
        h[0], h[1] = TEACHER_MAGIC, version
        h[2], h[3], h[4], h[5], h[6] = c["img_size"], c["in_chans"], c["num_classes"], c["stages"], c["blocks"]
        h[7:7 + c["stages"]] = c["widths"]
        if version == 2:
            h[TEACHER_ARCH_ENTRY] = TEACHER_ARCHS.index(arch)
    else:
        raise ConvertError(f"config kind must be student or teacher, not {c.get('kind')!r}")
    return h


def tensor_table(c):
    return student_tensor_table(c) if c["kind"] == "student" else teacher_tensor_table(c)


def read_bin(path):
    """A deit.c checkpoint (or a debug-state grads.bin) -> (config, OrderedDict of float32 arrays)
    keyed by deit.c names (student) or torchvision names (teacher), in file order."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < HEADER_INTS * 4:
        raise ConvertError(f"{path}: too short for a checkpoint header ({len(raw)} bytes, need {HEADER_INTS * 4})")
    h = np.frombuffer(raw, dtype="<i4", count=HEADER_INTS)
    c = header_to_config(h, path)
    table = tensor_table(c)
    n = sum(int(np.prod(s)) for _, s in table)
    if len(raw) != HEADER_INTS * 4 + 4 * n:
        raise ConvertError(f"{path}: file is {len(raw)} bytes but its header describes {HEADER_INTS * 4 + 4 * n} "
                           f"({n} parameters): truncated or not this format")
    data = np.frombuffer(raw, dtype="<f4", offset=HEADER_INTS * 4)
    out, off = OrderedDict(), 0
    for name, shape in table:
        size = int(np.prod(shape))
        out[name] = data[off:off + size].reshape(shape).astype(np.float32)  # a copy, native order
        off += size
    return c, out


def write_bin(path, c, tensors):
    """tensors: {name: array} with every name of the config's table (deit.c / torchvision names)."""
    h = config_to_header(c)
    parts = [h.tobytes()]
    for name, shape in tensor_table(c):
        a = np.asarray(tensors[name], dtype=np.float32)
        if a.size != int(np.prod(shape)):
            raise ConvertError(f"{name}: {a.size} numbers, expected {shape}")
        if not np.all(np.isfinite(a)):
            raise ConvertError(f"{name}: not all finite (deit.c refuses to load such a file)")
        parts.append(a.astype("<f4").tobytes())
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        for p in parts:
            f.write(p)
    os.replace(tmp, path)


# ---- deit.c tensors <-> PyTorch state_dict names and shapes -------------------------------------

def student_to_state_dict(c, t):
    """deit.c student tensors -> OrderedDict of numpy arrays with timm names and shapes."""
    D, P, L = c["dim"], c["patch_size"], c["depth"]
    sd = OrderedDict()
    sd["cls_token"] = t["cls_token"].reshape(1, 1, D)
    if c["dist_token"]:
        sd["dist_token"] = t["dist_token"].reshape(1, 1, D)
    sd["pos_embed"] = t["pos_embed"].reshape(1, -1, D)
    sd["patch_embed.proj.weight"] = t["patch_w"].reshape(D, c["in_chans"], P, P)
    sd["patch_embed.proj.bias"] = t["patch_b"]
    per_layer = [("norm1.weight", "ln1_w"), ("norm1.bias", "ln1_b"), ("attn.qkv.weight", "qkv_w"),
                 ("attn.qkv.bias", "qkv_b"), ("attn.proj.weight", "proj_w"), ("attn.proj.bias", "proj_b"),
                 ("norm2.weight", "ln2_w"), ("norm2.bias", "ln2_b"), ("mlp.fc1.weight", "fc1_w"),
                 ("mlp.fc1.bias", "fc1_b"), ("mlp.fc2.weight", "fc2_w"), ("mlp.fc2.bias", "fc2_b")]
    for i in range(L):
        for tn, dn in per_layer:
            sd[f"blocks.{i}.{tn}"] = t[dn][i]
    sd["norm.weight"], sd["norm.bias"] = t["lnf_w"], t["lnf_b"]
    sd["head.weight"], sd["head.bias"] = t["head_w"], t["head_b"]
    if c["dist_token"]:
        sd["head_dist.weight"], sd["head_dist.bias"] = t["head_dist_w"], t["head_dist_b"]
    return sd


def _get(sd, name, shape, used):
    if name not in sd:
        raise ConvertError(f"state_dict has no {name} (expected shape {tuple(shape)})")
    a = np.asarray(sd[name], dtype=np.float32)
    if a.size != int(np.prod(shape)) or (a.ndim == len(shape) and tuple(a.shape) != tuple(shape)):
        raise ConvertError(f"{name}: shape {tuple(a.shape)}, expected {tuple(shape)}")
    used.add(name)
    return a.reshape(shape)


def student_from_state_dict(c, sd):
    """timm-named state_dict (numpy arrays) -> deit.c tensors. Checks every shape and that no key is
    left over (a model with parts deit.c does not have, e.g. layer scale, is refused)."""
    D, L, H, C, P, Ci = c["dim"], c["depth"], c["mlp_hidden"], c["num_classes"], c["patch_size"], c["in_chans"]
    T = 1 + c["dist_token"] + (c["img_size"] // P) ** 2
    used = set()
    sd = dict(sd)
    for i in range(L):  # a ViT built with qkv_bias=False: zero bias is the same function
        k = f"blocks.{i}.attn.qkv.bias"
        if k not in sd and f"blocks.{i}.attn.qkv.weight" in sd:
            print(f"convert: {k} missing (qkv_bias=False?), using zeros", file=sys.stderr)
            sd[k] = np.zeros(3 * D, np.float32)
    t = {"patch_w": _get(sd, "patch_embed.proj.weight", (D, Ci, P, P), used).reshape(D, Ci * P * P),
         "patch_b": _get(sd, "patch_embed.proj.bias", (D,), used),
         "cls_token": _get(sd, "cls_token", (1, 1, D), used).reshape(D)}
    if c["dist_token"]:
        t["dist_token"] = _get(sd, "dist_token", (1, 1, D), used).reshape(D)
    t["pos_embed"] = _get(sd, "pos_embed", (1, T, D), used).reshape(T, D)
    per_layer = [("ln1_w", "norm1.weight", (D,)), ("ln1_b", "norm1.bias", (D,)),
                 ("qkv_w", "attn.qkv.weight", (3 * D, D)), ("qkv_b", "attn.qkv.bias", (3 * D,)),
                 ("proj_w", "attn.proj.weight", (D, D)), ("proj_b", "attn.proj.bias", (D,)),
                 ("ln2_w", "norm2.weight", (D,)), ("ln2_b", "norm2.bias", (D,)),
                 ("fc1_w", "mlp.fc1.weight", (H, D)), ("fc1_b", "mlp.fc1.bias", (H,)),
                 ("fc2_w", "mlp.fc2.weight", (D, H)), ("fc2_b", "mlp.fc2.bias", (D,))]
    for dn, tn, shape in per_layer:
        t[dn] = np.stack([_get(sd, f"blocks.{i}.{tn}", shape, used) for i in range(L)])
    t["lnf_w"], t["lnf_b"] = _get(sd, "norm.weight", (D,), used), _get(sd, "norm.bias", (D,), used)
    t["head_w"], t["head_b"] = _get(sd, "head.weight", (C, D), used), _get(sd, "head.bias", (C,), used)
    if c["dist_token"]:
        t["head_dist_w"] = _get(sd, "head_dist.weight", (C, D), used)
        t["head_dist_b"] = _get(sd, "head_dist.bias", (C,), used)
    left = sorted(k for k in sd if k not in used)
    if left:
        raise ConvertError("state_dict has entries deit.c's student does not: " + ", ".join(left[:10]) +
                           (f" (and {len(left) - 10} more)" if len(left) > 10 else ""))
    return t


def teacher_to_state_dict(c, t):
    """deit.c teacher tensors (already torchvision-named by read_bin) -> state_dict arrays, with
    num_batches_tracked (deit.c does not count batches: 0) after each BN's running_var."""
    sd = OrderedDict()
    for name, _ in teacher_tensor_table(c):
        sd[name] = t[name]
        if name.endswith(".running_var"):
            sd[name[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return sd


def teacher_from_state_dict(c, sd):
    used = set()
    t = OrderedDict((name, _get(sd, name, shape, used)) for name, shape in teacher_tensor_table(c))
    left = sorted(k for k in sd if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        what = "airbench" if c.get("arch") == "airbench" else "ResNet"
        raise ConvertError(f"state_dict has entries deit.c's {what} does not: " + ", ".join(left[:10]) +
                           (f" (and {len(left) - 10} more)" if len(left) > 10 else ""))
    return t


def infer_student_config(sd, heads=None):
    if "patch_embed.proj.weight" not in sd or "pos_embed" not in sd:
        raise ConvertError("not a ViT state_dict (no patch_embed.proj.weight / pos_embed)")
    D, Ci, P, P2 = np.shape(sd["patch_embed.proj.weight"])
    if P != P2:
        raise ConvertError(f"patch_embed.proj.weight: non-square patch {P}x{P2}")
    dist = 1 if "dist_token" in sd else 0
    T = np.shape(sd["pos_embed"])[1]
    N = T - 1 - dist
    g = int(round(N ** 0.5))
    if N < 1 or g * g != N:
        raise ConvertError(f"pos_embed has {T} tokens: {N} patches is not a square grid")
    depth = 0
    while f"blocks.{depth}.attn.qkv.weight" in sd:
        depth += 1
    if depth == 0:
        raise ConvertError("no blocks.0.attn.qkv.weight")
    if heads is None:
        heads = max(1, D // 64)
        print(f"convert: --heads not given, using dim // 64 = {heads} (the state_dict cannot tell)", file=sys.stderr)
    return {"kind": "student", "version": STUDENT_VERSION, "img_size": g * P, "patch_size": P, "in_chans": Ci,
            "num_classes": np.shape(sd["head.weight"])[0], "dim": D, "depth": depth, "heads": heads,
            "mlp_hidden": np.shape(sd["blocks.0.mlp.fc1.weight"])[0], "dist_token": dist}


def infer_teacher_config(sd, img_size=32):
    w = np.shape(sd["conv1.weight"])
    if w[2:] != (3, 3):
        raise ConvertError(f"conv1.weight is {w[2]}x{w[3]}: deit.c's ResNet has a 3x3 stride-1 stem (CIFAR "
                           "ResNet), not an ImageNet 7x7 stem with max pooling")
    stages = 0
    while f"layer{stages + 1}.0.conv1.weight" in sd:
        stages += 1
    if stages == 0:
        raise ConvertError("no layer1.0.conv1.weight")
    counts = []
    for s in range(stages):
        b = 0
        while f"layer{s + 1}.{b}.conv1.weight" in sd:
            b += 1
        counts.append(b)
    if len(set(counts)) != 1:
        raise ConvertError(f"blocks per stage {counts}: deit.c needs the same number in every stage")
    if any(f"layer{s + 1}.{b}.conv3.weight" in sd for s in range(stages) for b in range(counts[s])):
        raise ConvertError("bottleneck blocks (conv3): deit.c's ResNet has basic blocks only")
    widths = [int(np.shape(sd[f"layer{s + 1}.0.conv1.weight"])[0]) for s in range(stages)]
    if w[0] != widths[0]:
        raise ConvertError(f"stem width {w[0]} differs from stage 1 width {widths[0]}: not representable in deit.c")
    return {"kind": "teacher", "version": TEACHER_VERSION, "arch": "resnet", "img_size": img_size,
            "in_chans": int(w[1]), "num_classes": int(np.shape(sd["fc.weight"])[0]), "stages": stages,
            "blocks": counts[0], "widths": widths}


def is_airbench_state_dict(sd):
    return "0.weight" in sd and "2.conv1.weight" in sd and "7.weight" in sd


def infer_airbench_config(sd, img_size=None):
    """airbench94-named state_dict -> version 2 / arch airbench config (img_size: 32, or an error)."""
    w = tuple(np.shape(sd["0.weight"]))
    if len(w) != 4 or w[2:] != (2, 2) or w[0] != 8 * w[1]:
        raise ConvertError(f"0.weight has shape {w}: airbench's whitening conv is (8 * in_chans, in_chans, 2, 2)")
    widths = []
    for m in (2, 3, 4):
        if f"{m}.conv1.weight" not in sd:
            raise ConvertError(f"no {m}.conv1.weight: airbench has three ConvGroups (modules 2, 3, 4)")
        widths.append(int(np.shape(sd[f"{m}.conv1.weight"])[0]))
    c = dict(AIRBENCH_CONFIG, in_chans=int(w[1]), num_classes=int(np.shape(sd["7.weight"])[0]), widths=widths,
             img_size=img_size or 32)
    check_teacher_config(c)
    return c


def infer_config(sd, heads=None, img_size=None):
    """The configuration of a plain state_dict, from its names and shapes."""
    if is_airbench_state_dict(sd):
        return infer_airbench_config(sd, img_size)
    if "conv1.weight" in sd and "fc.weight" in sd:
        return infer_teacher_config(sd, img_size or 32)
    return infer_student_config(sd, heads)


# ---- .bin <-> .pt ---------------------------------------------------------------------------------

def bin_to_state_dict(path):
    """-> (config, OrderedDict of numpy arrays with PyTorch names)."""
    c, t = read_bin(path)
    return c, (student_to_state_dict(c, t) if c["kind"] == "student" else teacher_to_state_dict(c, t))


def to_torch(src, dst):
    import torch
    c, sd = bin_to_state_dict(src)
    tsd = OrderedDict((k, torch.from_numpy(np.array(v, order="C", copy=True))) for k, v in sd.items())
    torch.save({"model": tsd, "deit_config": c}, dst)
    n = sum(v.size for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    what = c["kind"] + (f" {c['arch']}, version {c['version']}" if c["kind"] == "teacher" else "")
    print(f"{src}: deit.c {what} ({n} parameters, {len(tsd)} tensors) -> {dst}")


def load_torch_state_dict(path):
    """A .pt -> (config or None, {name: float32/int numpy array})."""
    import torch
    obj = torch.load(path, map_location="cpu")
    cfg = None
    if isinstance(obj, dict) and "deit_config" in obj:
        cfg = dict(obj["deit_config"])
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    elif hasattr(obj, "state_dict") and callable(obj.state_dict):  # a whole nn.Module was saved
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: not a state_dict (a {type(obj).__name__})")
    sd = OrderedDict()
    for k, v in obj.items():
        k2 = k
        for pre in ("module.", "_orig_mod."):  # saved from DataParallel / DDP, torch.compile
            k2 = k2[len(pre):] if k2.startswith(pre) else k2
        if not torch.is_tensor(v):
            raise ConvertError(f"{path}: entry {k} is a {type(v).__name__}, not a tensor")
        sd[k2] = v.detach().cpu().numpy() if v.dtype in (torch.int64, torch.int32) else \
            v.detach().cpu().float().numpy()
    return cfg, sd


def state_dict_to_bin(cfg, sd, dst, heads=None, img_size=None):
    if cfg is None:
        cfg = infer_config(sd, heads, img_size)
    else:
        if cfg.get("kind") == "teacher":
            normalise_teacher_config(cfg)
        if heads is not None and cfg["kind"] == "student" and heads != cfg["heads"]:
            print(f"convert: --heads {heads} overrides the file's {cfg['heads']}", file=sys.stderr)
            cfg["heads"] = heads
        if img_size is not None and cfg["kind"] == "teacher":
            cfg["img_size"] = img_size
    t = student_from_state_dict(cfg, sd) if cfg["kind"] == "student" else teacher_from_state_dict(cfg, sd)
    write_bin(dst, cfg, t)
    return cfg


def from_torch(src, dst, heads=None, img_size=None):
    cfg, sd = load_torch_state_dict(src)
    inferred = cfg is None
    cfg = state_dict_to_bin(cfg, sd, dst, heads, img_size)
    desc = ", ".join(f"{k} {v}" for k, v in cfg.items() if k not in ("kind", "version"))
    print(f"{src}: {cfg['kind']} ({desc}{'; inferred from shapes' if inferred else ''}) -> {dst}")


def is_bin(path):
    """A deit.c checkpoint (by its magic), not a torch.save file."""
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and int(np.frombuffer(head, "<i4")[0]) in (STUDENT_MAGIC, TEACHER_MAGIC)


def load_any(path, heads=None, img_size=None):
    """A deit.c .bin or a .pt (ours, or a plain state_dict) -> (config, state_dict of numpy arrays)."""
    if is_bin(path):
        return bin_to_state_dict(path)
    cfg, sd = load_torch_state_dict(path)
    if cfg is None:
        cfg = infer_config(sd, heads, img_size)
    elif cfg.get("kind") == "teacher":
        normalise_teacher_config(cfg)
    return cfg, sd


# ---- airbench94 as a PyTorch module ----------------------------------------------------------------

if nn is not None:
    class Mul(nn.Module):
        """airbench94's last module: the logits times a constant (1/9)."""

        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def forward(self, x):
            return x * self.scale

    class ConvGroup(nn.Module):
        """conv3x3 -> max_pool2d(2) -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench94's ConvGroup).
        BatchNorm eps 1e-12, PyTorch momentum 0.4 (the recipe's 0.6 for the old value)."""

        def __init__(self, cin, cout, momentum=0.4):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.pool = nn.MaxPool2d(2)  # floor: 31 -> 15 -> 7 -> 3
            self.norm1 = nn.BatchNorm2d(cout, eps=AIRBENCH_BN_EPS, momentum=momentum)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.norm2 = nn.BatchNorm2d(cout, eps=AIRBENCH_BN_EPS, momentum=momentum)
            self.activ = nn.GELU()  # exact (erf)

        def forward(self, x):
            x = self.activ(self.norm1(self.pool(self.conv1(x))))
            return self.activ(self.norm2(self.conv2(x)))

    class Airbench(nn.Sequential):
        """airbench94 (the net of make_net, in float32 and without channels_last): modules
        0 whitening conv 2x2 (bias), 1 GELU, 2-4 ConvGroups, 5 MaxPool2d(3), 6 Flatten,
        7 Linear (no bias), 8 Mul(1/9); so its state_dict names are the recipe's. As in the
        recipe, the whitening weight and the BatchNorm weights do not require grad. Initialised
        with PyTorch's defaults (not the recipe's whitening / dirac init: load weights, or see
        deit.c). c: a config (AIRBENCH_CONFIG by default)."""

        def __init__(self, c=None):
            c = normalise_teacher_config(dict(c or AIRBENCH_CONFIG))
            if c.get("kind") != "teacher" or c["arch"] != "airbench":
                raise ConvertError(f"Airbench: config is a {c.get('kind')} {c.get('arch', '')}, not airbench")
            check_teacher_config(c)
            Ci, (w1, w2, w3) = c["in_chans"], c["widths"]
            W = 8 * Ci
            super().__init__(nn.Conv2d(Ci, W, 2, padding=0, bias=True), nn.GELU(),
                             ConvGroup(W, w1), ConvGroup(w1, w2), ConvGroup(w2, w3),
                             nn.MaxPool2d(3), nn.Flatten(), nn.Linear(w3, c["num_classes"], bias=False),
                             Mul(AIRBENCH_SCALE))
            self.config = c
            self[0].weight.requires_grad_(False)
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)

        def inference(self, x):
            return self(x)


def load_airbench(cfg, sd, dtype=None):
    """config + state_dict (numpy or torch) -> an Airbench module with those weights, eval mode."""
    m = Airbench(cfg)
    m.load_state_dict({k: torch.as_tensor(np.array(v, copy=True)) for k, v in sd.items()}, strict=True)
    return (m.to(dtype) if dtype is not None else m).eval()


# ---- selftest: the converter on synthetic files -------------------------------------------------

def airbench_spec_table(c):
    """deit.c's names and shapes in file order, written out from the format's description (not
    from airbench_tensor_table, which the selftest checks against it)."""
    Ci, C, ws = c["in_chans"], c["num_classes"], c["widths"]
    W = Ci * 8
    t = [("whiten_w", (W, Ci, 2, 2)), ("whiten_b", (W,))]
    for s in range(3):
        cin, w = (W if s == 0 else ws[s - 1]), ws[s]
        t.append((f"s{s}.conv1_w", (w, cin, 3, 3)))
        t += [(f"s{s}.bn1_{x}", (w,)) for x in ("gamma", "beta", "running_mean", "running_var")]
        t.append((f"s{s}.conv2_w", (w, w, 3, 3)))
        t += [(f"s{s}.bn2_{x}", (w,)) for x in ("gamma", "beta", "running_mean", "running_var")]
    return t + [("fc_w", (C, ws[2]))]


def airbench_spec_forward(t, x):
    """The eval-mode forward of the format's description, in torch.nn.functional, on deit.c names."""
    import torch.nn.functional as F
    T = {k: torch.from_numpy(np.asarray(v)).to(x.dtype) for k, v in t.items()}
    x = F.gelu(F.conv2d(x, T["whiten_w"], T["whiten_b"]))
    for s in range(3):
        for i in (1, 2):
            x = F.conv2d(x, T[f"s{s}.conv{i}_w"], padding=1)
            if i == 1:
                x = F.max_pool2d(x, 2)
            x = F.batch_norm(x, T[f"s{s}.bn{i}_running_mean"], T[f"s{s}.bn{i}_running_var"],
                             T[f"s{s}.bn{i}_gamma"], T[f"s{s}.bn{i}_beta"], False, 0.0, 1e-12)
            x = F.gelu(x)
    x = F.max_pool2d(x, 3).flatten(1)
    return (x @ T["fc_w"].t()) * (1.0 / 9.0)


def _random_tensors(table, rng):
    out = OrderedDict()
    for name, shape in table:
        if name.endswith("running_var"):
            a = rng.uniform(0.5, 2.0, shape)
        elif name.endswith("gamma") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
            a = 1 + 0.3 * rng.standard_normal(shape)
        elif len(shape) == 1:
            a = 0.2 * rng.standard_normal(shape)
        else:
            a = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
        out[name] = a.astype(np.float32)
    return out


def _write_raw(path, header, tensors):
    with open(path, "wb") as f:
        f.write(np.asarray(header, "<i4").tobytes())
        for a in tensors:
            f.write(np.asarray(a, "<f4").tobytes())


def selftest():
    import contextlib
    import io
    import shutil
    import tempfile
    tmp = tempfile.mkdtemp(prefix="convert_selftest.")
    res = {"ok": 0, "fail": 0}

    def check(cond, what):
        res["ok" if cond else "fail"] += 1
        print(f"selftest: {'ok  ' if cond else 'FAIL'} {what}")

    def same(a, b):
        with open(a, "rb") as f, open(b, "rb") as g:
            return f.read() == g.read()

    def round_trips(path, name):
        pt, back, plain, inferred = (os.path.join(tmp, name + x) for x in (".pt", ".back.bin", ".plain.pt",
                                                                           ".inferred.bin"))
        with contextlib.redirect_stdout(io.StringIO()):
            to_torch(path, pt)
            from_torch(pt, back)
            torch.save(torch.load(pt)["model"], plain)
            from_torch(plain, inferred)
        check(same(path, back), f"{name}: .bin -> .pt -> .bin byte for byte identical")
        return pt, same(path, inferred)

    def rejected(path, what, expect):
        try:
            read_bin(path)
            check(False, f"{what}: accepted")
        except ConvertError as e:
            check(expect in str(e), f"{what}: refused ({e})")

    try:
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
        for name, c in [("airbench", AIRBENCH_CONFIG),
                        ("airbench_small", dict(AIRBENCH_CONFIG, num_classes=100, widths=[16, 32, 24]))]:
            h = np.zeros(HEADER_INTS, np.int64)
            h[:10] = [TEACHER_MAGIC, 2, 32, c["in_chans"], c["num_classes"], 3, 1] + c["widths"]
            h[15] = 1
            spec = airbench_spec_table(c)
            t = _random_tensors(spec, rng)
            path = os.path.join(tmp, name + ".bin")
            _write_raw(path, h, t.values())
            cfg, ours = read_bin(path)
            check(cfg["arch"] == "airbench" and cfg["version"] == 2 and cfg["widths"] == c["widths"] and
                  [v.shape for v in ours.values()] == [s for _, s in spec] and
                  all(np.array_equal(a, b) for a, b in zip(ours.values(), t.values())),
                  f"{name}: read_bin gives the format's tensors in order ({len(ours)} tensors, "
                  f"{sum(a.size for a in ours.values())} parameters)")
            pt, inferred_same = round_trips(path, name)
            check(inferred_same, f"{name}: plain state_dict -> .bin (config inferred) identical")
            cfg2, sd = load_any(pt)
            m = load_airbench(cfg2, sd, torch.float64)
            with torch.no_grad():
                y, y_ref = m(x), airbench_spec_forward(t, x)
            err = float((y - y_ref).abs().max() / y_ref.abs().max())
            check(tuple(y.shape) == (4, c["num_classes"]) and err < 1e-12,
                  f"{name}: Airbench module = the format's forward in functional form (rel. err {err:.1e})")
        # a state_dict as airbench94 itself saves it: fp16 weights, torch.compile's prefix
        sdh = OrderedDict(("_orig_mod." + k, torch.from_numpy(np.array(v)).half() if v.dtype == np.float32 else
                           torch.from_numpy(np.array(v))) for k, v in sd.items())
        torch.save(sdh, os.path.join(tmp, "half.pt"))
        with contextlib.redirect_stdout(io.StringIO()):
            from_torch(os.path.join(tmp, "half.pt"), os.path.join(tmp, "half.bin"))
        _, back = read_bin(os.path.join(tmp, "half.bin"))
        check(all(np.array_equal(back[k], sdh["_orig_mod." + k].float().numpy()) for k in back),
              "airbench94-style fp16 state_dict (_orig_mod. names) -> .bin")

        # ResNet: version 1 as before, and the same tensors as version 2 / arch 0
        c = {"kind": "teacher", "version": 1, "img_size": 32, "in_chans": 3, "num_classes": 10, "stages": 2,
             "blocks": 2, "widths": [8, 16]}
        t = _random_tensors(resnet_tensor_table(c), rng)
        h = np.zeros(HEADER_INTS, np.int64)
        h[:9] = [TEACHER_MAGIC, 1, 32, 3, 10, 2, 2, 8, 16]
        v1 = os.path.join(tmp, "resnet_v1.bin")
        _write_raw(v1, h, t.values())
        _, same_inf = round_trips(v1, "resnet_v1")
        check(same_inf, "resnet_v1: plain state_dict -> .bin (config inferred, version 1) identical")
        h[1] = 2
        v2 = os.path.join(tmp, "resnet_v2.bin")
        _write_raw(v2, h, t.values())
        round_trips(v2, "resnet_v2")
        (c1, t1), (c2, t2) = read_bin(v1), read_bin(v2)
        check(c2["version"] == 2 and c2["arch"] == "resnet" and dict(c1, version=2) == c2 and
              all(np.array_equal(t1[k], t2[k]) for k in t1), "resnet v2 / arch 0 = v1's tensors")

        # what must be refused
        for what, edit, expect in [("teacher version 3", {1: 3}, "version 3"),
                                   ("version 2, arch 2", {15: 2}, "arch 2"),
                                   ("version 1 with header[15] = 1", {1: 1, 15: 1}, "not all 0"),
                                   ("airbench with header[16] = 5", {16: 5}, "not all 0"),
                                   ("airbench with 4 stages", {5: 4, 10: 256}, "3 stages"),
                                   ("airbench at img_size 64", {2: 64}, "32x32")]:
            h = np.zeros(HEADER_INTS, np.int64)
            h[:10], h[15] = [TEACHER_MAGIC, 2, 32, 3, 10, 3, 1, 64, 256, 256], 1
            for i, v in edit.items():
                h[i] = v
            bad = os.path.join(tmp, "bad.bin")
            _write_raw(bad, h, [np.zeros(10, np.float32)])
            rejected(bad, what, expect)
        with open(os.path.join(tmp, "airbench.bin"), "rb") as f:
            raw = f.read()
        with open(os.path.join(tmp, "short.bin"), "wb") as f:
            f.write(raw[:-4])
        rejected(os.path.join(tmp, "short.bin"), "airbench one float short", "truncated")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"selftest: {res['ok']} passed, {res['fail']} failed")
    return 1 if res["fail"] else 0


def main(argv=None):
    ap = argparse.ArgumentParser(description="Convert deit.c checkpoints to and from PyTorch state_dicts.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-torch", help="deit.c .bin -> .pt ({'model': state_dict, 'deit_config': {...}})")
    a.add_argument("src"), a.add_argument("dst")
    b = sub.add_parser("from-torch", help=".pt (ours, or a plain timm / torchvision state_dict) -> deit.c .bin")
    b.add_argument("src"), b.add_argument("dst")
    b.add_argument("--heads", type=int, help="attention heads of a student (default: the .pt's deit_config, "
                                             "else dim // 64)")
    b.add_argument("--img-size", type=int, help="input size of a ResNet without deit_config (default 32)")
    sub.add_parser("selftest", help="the converter on synthetic checkpoints (ResNet v1 / v2, airbench), no deit.c")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "selftest":
            return selftest()
        if args.cmd == "to-torch":
            to_torch(args.src, args.dst)
        else:
            from_torch(args.src, args.dst, args.heads, args.img_size)
    except (ConvertError, OSError) as e:
        print(f"convert: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
