#!/usr/bin/env python3
"""PyTorch CPU baseline for deit.c: DeiT (ViT with class + distillation tokens) on 32x32 images.

Optional dev tool, not needed to build or test deit.c. Needs PyTorch (no timm). On Debian
bookworm: `apt-get install python3-torch python3-numpy`, then run it with /usr/bin/python3
(a pyenv/venv `python3` earlier on PATH usually has no torch):

    /usr/bin/python3 dev/bench_torch.py --model tiny --batch 64 --threads 1

Two things in that setup decide the numbers more than PyTorch does:
  * Debian's torch is built with BLAS_INFO=generic, so torch.mm goes through whatever
    libblas.so.3 the alternatives system points at. With only libblas3 installed that is
    the netlib reference BLAS (~6 GFLOP/s here, 15x slower than OpenBLAS). --blas picks the
    library by re-running this script with LD_LIBRARY_PATH set (needs libopenblas0-openmp
    or libopenblas0-pthread installed; the system default is left alone). The "blas" info
    line says which library was actually loaded.
  * glibc returns big freed blocks to the kernel, so every large activation is page-faulted
    in again on each use; in this VM that cost up to 2x on inference. Unless --no-malloc-tune,
    mallopt() keeps blocks below 32 MiB in the heap (what jemalloc/tcmalloc setups also buy).
With --threads equal to the core count, any other load on the machine stalls the OpenMP
barriers (one 2-thread training step took 30 s instead of 1.2 s), so the median is printed
with min/max; the pthread OpenBLAS build oversubscribes at 2 threads and runs 3-5x slower.

OpenBLAS 0.3.21 does not recognise some newer CPUs (this project's AMD EPYC and Xeon VMs among
them) and falls back to its "Prescott" SSE kernels, about 3x slower. Unless OPENBLAS_CORETYPE is
already set, the re-run sets it from /proc/cpuinfo: SkylakeX where the CPU has AVX-512, Haswell
where it has AVX2. The "info openblas_core=" line says which kernels OpenBLAS actually runs.

--net resnet20 times the teacher instead: the CIFAR ResNet-20 of deit.c (3x3 stem, 3 stages
of 3 basic blocks, widths 16/32/64, 1x1 conv + BN shortcuts where the shape changes), SGD with
Nesterov momentum, at --batch (128 for the teacher).

--net airbench times the airbench94 teacher: dev/convert.py's Airbench module (whitening conv
2x2 -> GELU -> 3 x [conv3x3, max-pool 2, BN, GELU, conv3x3, BN, GELU] with widths 64/256/256 ->
max-pool 3 -> linear -> x 1/9), at --batch (default 1024, the recipe's). Its training step is
the recipe's: cross-entropy with label smoothing 0.2 summed over the batch (not averaged), SGD
with Nesterov momentum 0.85, BatchNorm biases at lr 0.09375 / weight decay 0.0213, every other
trainable tensor at lr 0.00146 / weight decay 1.36 (dev/AIRBENCH.md section 4); the whitening
weight and the BatchNorm weights stay frozen. Float32, NCHW (the recipe's fp16 and
channels_last are GPU choices). Inference is one plain forward (no test-time augmentation).

Every metric is one line `metric <name> key=value ...`, so `grep ^metric` collects them.
"""
import argparse, ctypes, os, statistics, sys, time
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert import Airbench  # noqa: E402

MODELS = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}  # dim, depth, heads


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, D = x.shape
        hd = D // self.heads
        q, k, v = self.qkv(self.ln1(x)).reshape(B, T, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        att = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, NH, T, T)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))  # exact (erf) GELU


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, classes=10, widths=(16, 32, 64), blocks=3):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for s, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if s > 0 and b == 0 else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class DeiT(nn.Module):
    def __init__(self, d, depth, heads, img=32, patch=4, classes=10):
        super().__init__()
        n = (img // patch) ** 2
        self.patch = nn.Conv2d(3, d, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d).normal_(std=0.02))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d).normal_(std=0.02))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 2, d).normal_(std=0.02))
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.head, self.head_dist = nn.Linear(d, classes), nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, D)
        B = x.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1), x], 1)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return self.head(x[:, 0]), self.head_dist(x[:, 1])


def bench(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), max(ts)


def loaded_blas():
    try:
        libs = {l.split()[-1] for l in open("/proc/self/maps") if "blas" in l and ".so" in l}
        return ",".join(sorted(libs)) or "none"
    except OSError:
        return "unknown"


def openblas_core():
    """The kernels the loaded OpenBLAS runs (openblas_get_corename), or '-' without OpenBLAS."""
    for lib in loaded_blas().split(","):
        if "openblas" in lib:
            try:
                f = ctypes.CDLL(lib).openblas_get_corename
                f.restype = ctypes.c_char_p
                return f().decode()
            except (OSError, AttributeError):
                pass
    return "-"


def default_coretype():
    flags = ""
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return "SkylakeX" if " avx512f" in flags else ("Haswell" if " avx2" in flags else None)


def pick_blas(a):
    """Re-exec with LD_LIBRARY_PATH pointing at the chosen Debian OpenBLAS build (once)."""
    if a.blas == "system" or os.environ.get("BENCH_TORCH_REEXEC"):
        return
    base = "/usr/lib/x86_64-linux-gnu/openblas-"
    kinds = ["openmp", "pthread"] if a.blas == "auto" else [a.blas]
    for k in kinds:
        if os.path.exists(base + k + "/libblas.so.3"):
            env = dict(os.environ, BENCH_TORCH_REEXEC="1")
            if not env.get("OPENBLAS_CORETYPE") and default_coretype():
                env["OPENBLAS_CORETYPE"] = default_coretype()
            env["LD_LIBRARY_PATH"] = base + k + ":" + env.get("LD_LIBRARY_PATH", "")
            if k == "pthread" and a.threads > 0:  # the pthread build ignores torch.set_num_threads
                env.setdefault("OPENBLAS_NUM_THREADS", str(a.threads))
            os.execve(sys.executable, [sys.executable] + sys.argv, env)
    if a.blas != "auto":
        sys.exit(f"no {base}{a.blas}/libblas.so.3; apt-get install libopenblas0-{a.blas}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--net", choices=["deit", "resnet20", "airbench"], default="deit")
    ap.add_argument("--model", choices=MODELS, default="tiny")
    ap.add_argument("--batch", type=int, default=0, help="default 64 for DeiT, 128 for ResNet-20, 1024 for airbench")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave default)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip", default="", help="comma list of train,infer,gemm to skip")
    ap.add_argument("--blas", choices=["auto", "system", "openmp", "pthread"], default="auto",
                    help="auto: OpenBLAS (OpenMP build, else pthread build) if installed, else system libblas")
    ap.add_argument("--no-malloc-tune", action="store_true", help="leave glibc malloc at its defaults")
    a = ap.parse_args()
    pick_blas(a)
    if not a.no_malloc_tune:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: never give the heap top back
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: serve blocks < 32 MiB from the heap
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    d, depth, heads = MODELS[a.model]
    B, T = a.batch or {"resnet20": 128, "airbench": 1024}.get(a.net, 64), 66
    what = {"resnet20": "net=resnet20", "airbench": "net=airbench widths=64,256,256"}.get(
        a.net, f"net=deit model={a.model} dim={d} depth={depth} heads={heads}")
    print(f"info torch={torch.__version__} threads={torch.get_num_threads()} {what} batch={B} "
          f"warmup={a.warmup} repeats={a.repeats}")
    env = " ".join(f"{k}={os.environ.get(k, '-')}" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE"))
    print(f"info blas={loaded_blas()} {env} malloc_tune={int(not a.no_malloc_tune)}")
    print(f"info openblas_core={openblas_core()}")
    skip = set(a.skip.split(","))
    if a.net != "deit":
        skip.add("gemm")
    model = {"resnet20": ResNet20, "airbench": Airbench}.get(a.net, lambda: DeiT(d, depth, heads))()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"info params={n_params} trainable={sum(p.numel() for p in model.parameters() if p.requires_grad)}")
    x = torch.randn(B, 3, 32, 32)
    y = torch.randint(0, 10, (B,))

    if "train" not in skip:
        if a.net == "resnet20":
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        elif a.net == "airbench":  # dev/AIRBENCH.md section 4
            kilostep_scale = 1024 * (1 + 1 / (1 - 0.85))
            lr, wd = 11.5 / kilostep_scale, 0.0153 * 1024 / kilostep_scale
            lr_biases = 64 * lr
            trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
            opt = torch.optim.SGD([
                dict(params=[p for k, p in trainable if "norm" in k], lr=lr_biases, weight_decay=wd / lr_biases),
                dict(params=[p for k, p in trainable if "norm" not in k], lr=lr, weight_decay=wd / lr)],
                momentum=0.85, nesterov=True)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
        model.train()

        def step():
            out = model(x)
            if a.net == "resnet20":
                loss = F.cross_entropy(out, y)
            elif a.net == "airbench":
                loss = F.cross_entropy(out, y, label_smoothing=0.2, reduction="sum")
            else:
                loss = 0.5 * F.cross_entropy(out[0], y) + 0.5 * F.cross_entropy(out[1], y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        med, lo, hi = bench(step, a.warmup, a.repeats)
        print(f"metric train img_per_s={B / med:.1f} step_ms={med * 1e3:.1f} min_ms={lo * 1e3:.1f} max_ms={hi * 1e3:.1f}")

    if "infer" not in skip:
        model.eval()

        def infer():
            with torch.no_grad():
                out = model(x)
                return (out[0] + out[1]) / 2 if a.net == "deit" else out
        med, lo, hi = bench(infer, a.warmup, a.repeats)
        print(f"metric infer img_per_s={B / med:.1f} batch_ms={med * 1e3:.1f} min_ms={lo * 1e3:.1f} max_ms={hi * 1e3:.1f}")

    if "gemm" not in skip:
        M = B * T
        for K, N in [(d, 4 * d), (4 * d, d), (d, 3 * d)]:
            A, W = torch.randn(M, K), torch.randn(K, N)
            Wt = W.t().contiguous()  # nn.Linear layout (N, K): x @ W^T
            flop = 2.0 * M * N * K
            for name, fn in [("mm", lambda: torch.mm(A, W)), ("linear", lambda: F.linear(A, Wt))]:
                med, lo, hi = bench(fn, a.warmup, max(a.repeats, 5))
                print(f"metric gemm_{name} M={M} K={K} N={N} gflops={flop / med / 1e9:.1f} "
                      f"ms={med * 1e3:.2f} best_gflops={flop / lo / 1e9:.1f}")


if __name__ == "__main__":
    main()
