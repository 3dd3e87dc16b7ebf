#!/usr/bin/env python3
"""An independent PyTorch reference for deit.c: the student, the ResNet teacher and DeiT's losses,
written here from the paper / README (no timm, no torchvision), checked against
`./deit debug-state` on one batch: logits, loss, and the gradient of every parameter tensor.

    python3 dev/reference.py --student S.bin --vit V.bin --resnet T.bin [--tiny224] [--workdir DIR]
        runs every case (below) on these checkpoints and on randomised copies of them
    python3 dev/reference.py --ckpt X.bin [--distill none|soft|hard --teacher T.bin --alpha A --tau TAU]
        one case

Cases: a student with a distillation token and one without (a plain ViT), each with distill
none / soft (tau 2, alpha 0.3) / hard (alpha 0.5) against the ResNet teacher; both again with a
student checkpoint as the teacher (its output: the mean of its heads, eval mode); the ResNet on
its own (BatchNorm in training mode: batch statistics); with --tiny224, a random DeiT-Tiny at
ImageNet size (224 / patch 16 / 1000 classes, converted from a plain state_dict), soft
distillation from itself. "perturbed" copies replace every
parameter by random values of a useful scale (LayerNorm / BatchNorm weights away from 1, biases
and running statistics away from 0, attention logits of order 1), so that no term of a
gradient can hide behind an identity init.

The reference computes in float64 by default (--dtype float32 for PyTorch's own float32): the
errors it reports are then deit.c's float32 rounding. Per case: max abs error of the logits
(and relative to their max), relative error of the loss, and for every parameter tensor
||g_c - g_t||_inf / (||g_t||_inf + 1e-12); pass: logits and loss within 1e-4 relative,
every gradient within 1e-3. Exit status 1 on any failure.
"""
import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convert  # noqa: E402

LOGIT_TOL, LOSS_TOL, GRAD_TOL = 1e-4, 1e-4, 1e-3


# ---- the student: pre-norm ViT with class and distillation tokens (timm's names) ---------------

class PatchEmbed(nn.Module):
    def __init__(self, in_chans, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)  # a P x P conv with stride P

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D), patches row-major


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, D = x.shape
        hd = D // self.heads
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, hd).permute(2, 0, 3, 1, 4)  # rows q, k, v; heads inside
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = (q * hd ** -0.5) @ k.transpose(-2, -1)
        att = att.softmax(dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(B, T, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Student(nn.Module):
    def __init__(self, c):
        super().__init__()
        D, N = c["dim"], (c["img_size"] // c["patch_size"]) ** 2
        self.has_dist = bool(c["dist_token"])
        self.patch_embed = PatchEmbed(c["in_chans"], c["patch_size"], D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        if self.has_dist:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.has_dist + N, D))
        self.blocks = nn.ModuleList([Block(D, c["heads"], c["mlp_hidden"]) for _ in range(c["depth"])])
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, c["num_classes"])
        if self.has_dist:
            self.head_dist = nn.Linear(D, c["num_classes"])

    def forward(self, x):
        """-> (class head logits, distillation head logits or None)"""
        x = self.patch_embed(x)
        B = x.shape[0]
        tokens = [self.cls_token.expand(B, -1, -1)]
        if self.has_dist:
            tokens.append(self.dist_token.expand(B, -1, -1))
        x = torch.cat(tokens + [x], dim=1) + self.pos_embed  # [cls, dist, patches]
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return self.head(x[:, 0]), (self.head_dist(x[:, 1]) if self.has_dist else None)

    def inference(self, x):
        a, b = self(x)
        return a if b is None else 0.5 * (a + b)


# ---- the teacher: CIFAR ResNet with basic blocks (torchvision's names) ---------------------------

def bn(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = bn(cout)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), bn(cout)) if shortcut else None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


class ResNet(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c["in_chans"], c["widths"][0], 3, 1, 1, bias=False)
        self.bn1 = bn(c["widths"][0])
        stages = [[] for _ in range(c["stages"])]
        for s, b, cin, cout, stride, sc in convert.teacher_blocks(c):
            stages[s].append(BasicBlock(cin, cout, stride, sc))
        for s, blocks in enumerate(stages):
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.num_stages = c["stages"]
        self.fc = nn.Linear(c["widths"][-1], c["num_classes"])

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for s in range(self.num_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(x.mean(dim=(2, 3))), None

    def inference(self, x):
        return self(x)[0]


def build(c):
    return Student(c) if c["kind"] == "student" else ResNet(c)


def load_model(path, dtype=torch.float64, heads=None):
    """A deit.c .bin, or a .pt (ours or a plain state_dict) -> (config, model) with the weights."""
    if path.endswith(".bin"):
        c, sd = convert.bin_to_state_dict(path)
    else:
        c, sd = convert.load_torch_state_dict(path)
        if c is None:
            c = (convert.infer_teacher_config(sd) if "conv1.weight" in sd else convert.infer_student_config(sd, heads))
    m = build(c)
    m.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in sd.items()}, strict=True)
    return c, m.to(dtype)


# ---- DeiT's losses, as deit.c section 4 ------------------------------------------------------

def deit_loss(logits, logits_dist, targets, teacher_logits, distill, alpha, tau):
    """-> (total, base, distill). base: soft-target CE on the class head (mean over the batch);
    soft: tau^2 / (B C) sum p_t (log p_t - log p_s) at temperature tau; hard: CE against the
    teacher's argmax; both on the distillation head, or the class head without one."""
    B, C = logits.shape
    base = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    if distill == "none" or teacher_logits is None:
        return base, base, torch.zeros((), dtype=logits.dtype)
    kd = logits_dist if logits_dist is not None else logits
    if distill == "soft":
        ls, lt = F.log_softmax(kd / tau, dim=1), F.log_softmax(teacher_logits / tau, dim=1)
        dist = (lt.exp() * (lt - ls)).sum() * tau * tau / (B * C)
    else:
        dist = F.cross_entropy(kd, teacher_logits.argmax(dim=1))
    return (1 - alpha) * base + alpha * dist, base, dist


# ---- one case: run ./deit debug-state, redo it here, compare ---------------------------------

def read_raw(path, dtype, shape):
    a = np.fromfile(path, dtype=dtype)
    if a.size != int(np.prod(shape)):
        raise RuntimeError(f"{path}: {a.size} values, expected {shape}")
    return a.reshape(shape)


def run_case(deit, ckpt, dump, batch, seed, distill="none", teacher=None, alpha=0.5, tau=1.0, smoothing=0.1,
             dtype=torch.float64):
    os.makedirs(dump, exist_ok=True)
    cmd = [deit, "debug-state", "--ckpt", ckpt, "--dump", dump, "--batch", str(batch), "--seed", str(seed),
           "--label-smoothing", repr(smoothing)]
    if distill != "none":
        cmd += ["--distill", distill, "--teacher", teacher, "--alpha", repr(alpha), "--tau", repr(tau)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip() or p.stdout.strip()}")

    c, model = load_model(ckpt, dtype)
    model.train()  # BatchNorm: batch statistics (the student has no dropout / drop path here)
    C, S, Ci = c["num_classes"], c["img_size"], c["in_chans"]
    images = torch.from_numpy(read_raw(f"{dump}/images.f32", "<f4", (batch, Ci, S, S))).to(dtype)
    targets = torch.from_numpy(read_raw(f"{dump}/targets.f32", "<f4", (batch, C))).to(dtype)
    labels = read_raw(f"{dump}/labels.i32", "<i4", (batch,))
    onehot = np.eye(C)[labels]
    exp_targets = onehot * (1 - smoothing) + smoothing / C
    tgt_err = float(np.abs(targets.numpy() - exp_targets).max())
    r = {"targets_err": tgt_err}

    tl = None
    if distill != "none":
        tl_c = read_raw(f"{dump}/teacher_logits.f32", "<f4", (batch, C))
        tc, tmodel = load_model(teacher, dtype)
        tmodel.eval()  # a teacher used for distillation: running statistics, mean of the heads
        with torch.no_grad():
            tl_t = tmodel.inference(images).numpy()
        r["teacher_logits_err"] = float(np.abs(tl_c - tl_t).max()) / max(float(np.abs(tl_t).max()), 1e-12)
        tl = torch.from_numpy(tl_c).to(dtype)  # the loss uses deit.c's teacher logits (same argmax)

    logits, logits_dist = model(images)
    total, base, dist = deit_loss(logits, logits_dist, targets, tl, distill, alpha, tau)
    model.zero_grad(set_to_none=False)
    total.backward()

    lc = read_raw(f"{dump}/logits.f32", "<f4", (batch, C))
    err = np.abs(lc - logits.detach().numpy()).max()
    scale = np.abs(logits.detach().numpy()).max()
    if logits_dist is not None:
        ldc = read_raw(f"{dump}/logits_dist.f32", "<f4", (batch, C))
        err = max(err, np.abs(ldc - logits_dist.detach().numpy()).max())
        scale = max(scale, np.abs(logits_dist.detach().numpy()).max())
    r["logits_abs"] = float(err)
    r["logits_rel"] = float(err / max(scale, 1e-12))

    with open(f"{dump}/loss.txt") as f:
        lt_c = [float(x) for x in f.read().split()]
    lt_t = [float(total), float(base), float(dist)]
    r["loss"] = lt_t[0]
    r["loss_rel"] = max(abs(a - b) / max(abs(b), 1e-12) if (a or b) else 0.0 for a, b in zip(lt_c, lt_t))

    gc_cfg, gsd = convert.bin_to_state_dict(f"{dump}/grads.bin")
    params = dict(model.named_parameters())
    worst, worst_name, nonzero_buffers = 0.0, "", []
    per = {}
    for name, g_c in gsd.items():
        if name not in params:  # BatchNorm running statistics: no gradient
            if name.endswith("num_batches_tracked"):
                continue
            if np.any(g_c != 0):
                nonzero_buffers.append(name)
            continue
        g_t = params[name].grad
        g_t = np.zeros(g_c.shape) if g_t is None else g_t.detach().double().numpy()
        e = float(np.abs(g_c.astype(np.float64) - g_t).max() / (np.abs(g_t).max() + 1e-12))
        per[name] = e
        if e >= worst:
            worst, worst_name = e, name
    r["grad_rel"], r["grad_worst"], r["grad_per_tensor"] = worst, worst_name, per
    r["nonzero_buffer_grads"] = nonzero_buffers
    r["ok"] = (r["logits_rel"] < LOGIT_TOL and r["loss_rel"] < LOSS_TOL and worst < GRAD_TOL and tgt_err < 1e-6
               and not nonzero_buffers and r.get("teacher_logits_err", 0.0) < LOGIT_TOL)
    return r


# ---- randomised copies of checkpoints ----------------------------------------------------------

def perturb(src, dst, seed):
    """A copy of src with every parameter random at a useful scale (see the module docstring)."""
    c, t = convert.read_bin(src)
    rng = np.random.default_rng(seed)
    nrm = lambda shape, s: (rng.standard_normal(shape) * s).astype(np.float32)  # noqa: E731
    out = {}
    if c["kind"] == "student":
        for k, a in t.items():
            if k in ("ln1_w", "ln2_w", "lnf_w"):
                out[k] = 1 + nrm(a.shape, 0.3)
            elif k.endswith("_b") or k in ("ln1_b", "ln2_b", "lnf_b"):
                out[k] = nrm(a.shape, 0.2)
            elif k in ("cls_token", "dist_token", "pos_embed"):
                out[k] = nrm(a.shape, 0.5)
            else:  # linear weights (out, in): N(0, 1/in); qkv larger, so attention is far from uniform
                gain = 1.5 if k == "qkv_w" else 1.0
                out[k] = nrm(a.shape, gain / math.sqrt(a.shape[-1]))
    else:
        for k, a in t.items():
            if k.endswith(".weight") and a.ndim == 4:
                out[k] = nrm(a.shape, math.sqrt(2.0 / (a.shape[1] * a.shape[2] * a.shape[3])))
            elif k.endswith("running_var"):
                out[k] = rng.uniform(0.5, 2.0, a.shape).astype(np.float32)
            elif k.endswith("running_mean") or k.endswith(".bias"):
                out[k] = nrm(a.shape, 0.2)
            elif k == "fc.weight":
                out[k] = nrm(a.shape, 1 / math.sqrt(a.shape[1]))
            else:  # BN weight
                out[k] = 1 + nrm(a.shape, 0.3)
    convert.write_bin(dst, c, out)


def random_timm_student(dst, seed=0):
    """DeiT-Tiny-distilled at ImageNet size (img 224, patch 16, dim 192, depth 12, heads 3, 1000
    classes) with random weights, saved as a plain state_dict and converted to deit.c by
    convert.py's shape inference (heads = dim // 64 = 3): the layout timm's
    deit_tiny_distilled_patch16_224 has."""
    c = {"kind": "student", "version": 1, "img_size": 224, "patch_size": 16, "in_chans": 3, "num_classes": 1000,
         "dim": 192, "depth": 12, "heads": 3, "mlp_hidden": 768, "dist_token": 1}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in Student(c).state_dict().items():
        if k.endswith("norm.weight") or k.endswith("norm1.weight") or k.endswith("norm2.weight"):
            sd[k] = 1 + 0.2 * torch.randn(v.shape, generator=g)
        elif v.dim() == 1:
            sd[k] = 0.1 * torch.randn(v.shape, generator=g)
        elif k in ("cls_token", "dist_token", "pos_embed"):
            sd[k] = 0.3 * torch.randn(v.shape, generator=g)
        else:
            sd[k] = torch.randn(v.shape, generator=g) / math.sqrt(v[0].numel())
    plain = dst[:-len(".bin")] + "_plain.pt"
    torch.save(sd, plain)
    _, sdn = convert.load_torch_state_dict(plain)
    cfg = convert.state_dict_to_bin(None, sdn, dst)
    assert all(cfg[k] == c[k] for k in c if k != "version"), (cfg, c)


# ---- the command line ------------------------------------------------------------------------

def fmt(name, r):
    s = (f"{name:<44s} logits {r['logits_abs']:.2e} abs {r['logits_rel']:.2e} rel | loss {r['loss']:.6f} "
         f"rel err {r['loss_rel']:.2e} | grad max rel err {r['grad_rel']:.2e} ({r['grad_worst']})")
    if "teacher_logits_err" in r:
        s += f" | teacher logits rel err {r['teacher_logits_err']:.2e}"
    if r["nonzero_buffer_grads"]:
        s += f" | NONZERO running-stat grads: {r['nonzero_buffer_grads']}"
    return s + ("  ok" if r["ok"] else "  FAIL")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deit", default=None, help="the deit binary (default: ./deit next to dev/)")
    ap.add_argument("--student", help="student checkpoint with a distillation token")
    ap.add_argument("--vit", help="student checkpoint without one")
    ap.add_argument("--resnet", help="ResNet teacher checkpoint")
    ap.add_argument("--ckpt", help="one case: this checkpoint")
    ap.add_argument("--teacher", help="one case: the teacher for --distill soft|hard")
    ap.add_argument("--distill", default="none", choices=["none", "soft", "hard"])
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--no-perturbed", action="store_true", help="skip the randomised copies")
    ap.add_argument("--tiny224", action="store_true", help="also a random DeiT-Tiny at 224 / patch 16 / 1000 "
                    "classes, converted from a plain state_dict (batch 2; about 10 s)")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--workdir", help="where the dumps go (default: a temp dir, removed)")
    ap.add_argument("--verbose", action="store_true", help="print every tensor's gradient error")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    deit = args.deit or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "deit")
    work = args.workdir or tempfile.mkdtemp(prefix="deit_ref_")
    os.makedirs(work, exist_ok=True)

    cases = []  # (name, ckpt, distill, teacher, alpha, tau[, batch])
    if args.ckpt:
        cases.append((os.path.basename(args.ckpt) + f" distill {args.distill}", args.ckpt, args.distill,
                      args.teacher, args.alpha, args.tau))
    else:
        if not (args.student and args.vit and args.resnet):
            ap.error("give --student, --vit and --resnet (all cases), or --ckpt (one case)")
        variants = [("", args.student, args.vit, args.resnet)]
        if not args.no_perturbed:
            p = {k: os.path.join(work, f"perturbed_{k}.bin") for k in ("student", "vit", "resnet")}
            perturb(args.student, p["student"], 1)
            perturb(args.vit, p["vit"], 2)
            perturb(args.resnet, p["resnet"], 3)
            variants.append(("perturbed ", p["student"], p["vit"], p["resnet"]))
        for pre, s, v, t in variants:
            for label, ck in (("student(dist)", s), ("vit(no dist)", v)):
                cases.append((f"{pre}{label} none", ck, "none", None, 0.5, 1.0))
                cases.append((f"{pre}{label} soft tau 2 a 0.3 <- resnet", ck, "soft", t, 0.3, 2.0))
                cases.append((f"{pre}{label} hard a 0.5 <- resnet", ck, "hard", t, 0.5, 1.0))
            cases.append((f"{pre}student(dist) soft tau 3 a 0.7 <- vit", s, "soft", v, 0.7, 3.0))
            cases.append((f"{pre}vit(no dist) hard a 0.4 <- student", v, "hard", s, 0.4, 1.0))
            cases.append((f"{pre}resnet (BN train mode) none", t, "none", None, 0.5, 1.0))
        if args.tiny224:
            tiny = os.path.join(work, "deit_tiny_224.bin")
            random_timm_student(tiny)
            cases.append(("deit-tiny 224/16 soft tau 2 <- itself", tiny, "soft", tiny, 0.5, 2.0, 2))

    failed, worst, worst_case = 0, 0.0, ""
    for i, (name, ck, distill, teacher, alpha, tau, *batch) in enumerate(cases):
        try:
            r = run_case(deit, ck, os.path.join(work, f"case{i}"), batch[0] if batch else args.batch, args.seed,
                         distill, teacher, alpha, tau, args.label_smoothing, dtype)
        except Exception as e:  # a case that cannot run is a failure, not a crash of the others
            print(f"{name:<44s} ERROR: {e}")
            failed += 1
            continue
        print(fmt(name, r), flush=True)
        if args.verbose:
            for k, e in r["grad_per_tensor"].items():
                print(f"    {k:<40s} {e:.2e}")
        failed += not r["ok"]
        if r["grad_rel"] >= worst:
            worst, worst_case = r["grad_rel"], f"{name}: {r['grad_worst']}"
    print(f"reference: {len(cases) - failed} of {len(cases)} cases agree ({args.dtype} reference); max relative "
          f"gradient error {worst:.2e} ({worst_case})")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
