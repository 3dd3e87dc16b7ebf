#!/usr/bin/env python3
"""deit.c checkpoints <-> PyTorch state_dicts (torch + numpy only).

    python3 dev/convert.py to-torch   IN.bin OUT.pt
    python3 dev/convert.py from-torch IN.pt  OUT.bin [--heads N] [--img-size S]

A deit.c checkpoint is 256 little-endian int32 (the header, unused entries 0) followed by the
parameters as float32 (README, "Checkpoint formats"). The magic in header[0] says which model:

  student (20201223) <-> timm's VisionTransformer / DistilledVisionTransformer names
      patch_embed.proj.{weight,bias}, cls_token, dist_token, pos_embed,
      blocks.{i}.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2 .{weight,bias},
      norm.{weight,bias}, head.{weight,bias}, head_dist.{weight,bias}
  teacher (20151210) <-> torchvision's ResNet names
      conv1.weight, bn1.*, layer{s}.{b}.conv1.weight, .bn1.*, .conv2.weight, .bn2.*,
      .downsample.0.weight, .downsample.1.*, fc.{weight,bias}
      (bn.* = weight, bias, running_mean, running_var, num_batches_tracked)

to-torch writes {"model": state_dict, "deit_config": {...}} (the layout of the official DeiT
checkpoints, plus the deit.c header as a dict), so from-torch can rebuild the exact header:
deit.c -> .pt -> deit.c is byte for byte identical. from-torch also reads a plain state_dict
(or {"model": ...} / {"state_dict": ...} without deit_config) and infers the configuration
from the shapes; the number of attention heads cannot be inferred (--heads, default dim // 64),
nor a ResNet's input size (--img-size, default 32).

Also a library: read_bin(path) -> (config, {deit.c tensor name: np.ndarray}) and
to_state_dict / from_state_dict, used by dev/reference.py and dev/eval_torch.py.
"""
import argparse
import os
import sys
from collections import OrderedDict

import numpy as np

HEADER_INTS = 256
STUDENT_MAGIC, STUDENT_VERSION = 20201223, 1
TEACHER_MAGIC, TEACHER_VERSION = 20151210, 1
TEACHER_MAX_STAGES = 8  # header[7 .. 7+S-1] holds the widths; deit.c allows a few stages
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


def teacher_tensor_table(c):
    """(torchvision name, shape) in checkpoint order. BN = weight, bias, running_mean, running_var."""
    def convbn(conv, bn, cout, cin, k):
        return [(conv, (cout, cin, k, k))] + [(f"{bn}.{x}", (cout,)) for x in
                                              ("weight", "bias", "running_mean", "running_var")]
    t = convbn("conv1.weight", "bn1", c["widths"][0], c["in_chans"], 3)
    for s, b, cin, cout, stride, sc in teacher_blocks(c):
        p = f"layer{s + 1}.{b}"
        t += convbn(f"{p}.conv1.weight", f"{p}.bn1", cout, cin, 3)
        t += convbn(f"{p}.conv2.weight", f"{p}.bn2", cout, cout, 3)
        if sc:
            t += convbn(f"{p}.downsample.0.weight", f"{p}.downsample.1", cout, cin, 1)
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


def check_teacher_config(c):
    for k in ("img_size", "in_chans", "num_classes", "stages", "blocks"):
        if not isinstance(c.get(k), int) or c[k] < 1:
            raise ConvertError(f"teacher config: {k} missing or not a positive integer")
    if c["stages"] > TEACHER_MAX_STAGES:
        raise ConvertError(f"teacher config: {c['stages']} stages, at most {TEACHER_MAX_STAGES}")
    w = c.get("widths")
    if not isinstance(w, (list, tuple)) or len(w) != c["stages"] or not all(isinstance(x, int) and x > 0 for x in w):
        raise ConvertError(f"teacher config: widths must be {c['stages']} positive integers, not {w!r}")


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
        if version != TEACHER_VERSION:
            raise ConvertError(f"{path}: teacher checkpoint version {version}, this script reads {TEACHER_VERSION}")
        S = int(h[5])
        if S < 1 or S > TEACHER_MAX_STAGES:
            raise ConvertError(f"{path}: stages {S} out of range [1, {TEACHER_MAX_STAGES}]")
        c = {"kind": "teacher", "version": version, "img_size": int(h[2]), "in_chans": int(h[3]),
             "num_classes": int(h[4]), "stages": S, "blocks": int(h[6]), "widths": [int(x) for x in h[7:7 + S]]}
        used = 7 + S
        check_teacher_config(c)
    else:
        raise ConvertError(f"{path}: not a deit.c checkpoint (magic {magic}; student {STUDENT_MAGIC}, "
                           f"teacher {TEACHER_MAGIC})")
    if np.any(h[used:] != 0):
        raise ConvertError(f"{path}: header entries after [{used - 1}] are not all 0 (not version 1 of this format)")
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
        h[0], h[1] = TEACHER_MAGIC, TEACHER_VERSION
        h[2], h[3], h[4], h[5], h[6] = c["img_size"], c["in_chans"], c["num_classes"], c["stages"], c["blocks"]
        h[7:7 + c["stages"]] = c["widths"]
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
        raise ConvertError("state_dict has entries deit.c's ResNet does not: " + ", ".join(left[:10]) +
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
    return {"kind": "teacher", "version": TEACHER_VERSION, "img_size": img_size, "in_chans": int(w[1]),
            "num_classes": int(np.shape(sd["fc.weight"])[0]), "stages": stages, "blocks": counts[0],
            "widths": widths}


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
    print(f"{src}: deit.c {c['kind']} ({n} parameters, {len(tsd)} tensors) -> {dst}")


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
        k2 = k[len("module."):] if k.startswith("module.") else k  # saved from DataParallel / DDP
        if not torch.is_tensor(v):
            raise ConvertError(f"{path}: entry {k} is a {type(v).__name__}, not a tensor")
        sd[k2] = v.detach().cpu().numpy() if v.dtype in (torch.int64, torch.int32) else \
            v.detach().cpu().float().numpy()
    return cfg, sd


def state_dict_to_bin(cfg, sd, dst, heads=None, img_size=None):
    if cfg is None:
        if "conv1.weight" in sd and "fc.weight" in sd:
            cfg = infer_teacher_config(sd, img_size or 32)
        else:
            cfg = infer_student_config(sd, heads)
    else:
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
    args = ap.parse_args(argv)
    try:
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
