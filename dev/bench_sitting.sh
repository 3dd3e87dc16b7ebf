#!/bin/sh
# One benchmark sitting: the README's speed table, every row in a few minutes, in one go.
#   sh dev/bench_sitting.sh > experiments/logs/bench_sitting_YYYYMMDD.out 2>&1
#   ROUNDS=3 sh dev/bench_sitting.sh ...      (default 2 rounds)
# Run it with nothing else on the machine (a second job makes OpenMP's threads wait on each
# other, and the numbers mean nothing). It builds ./deit (make) and /tmp/deit_plain (the user's
# plain `cc -O3 deit.c -lm`), then times deit.c and PyTorch (dev/bench_torch.py) on the same
# nets, at 2 threads and at 1. PyTorch runs with OpenBLAS set to the kernels of this processor
# (OPENBLAS_CORETYPE: SkylakeX where AVX-512 is, Haswell where AVX2 is); bench_torch.py prints
# the core OpenBLAS used. Without python3-torch the PyTorch rows are skipped (said so).
# On a shared virtual machine the same command moves by up to 20% from one minute to the next,
# so each round runs every row once, deit.c and PyTorch side by side (one right after the
# other), and the table at the end gives each row's best round and its worst.
# ISA=avx2 on an AVX-512 machine holds both programs to AVX2, as on a machine without AVX-512:
# deit.c built as `make` builds it on such a machine (OpenMP, -march=x86-64-v3: AVX2 + FMA) and run
# with DEIT_KERNEL=avx2; PyTorch with OpenBLAS's Haswell kernels, ATEN_CPU_CAPABILITY=avx2 and
# ONEDNN_MAX_CPU_ISA=AVX2 (oneDNN's convolutions). The plain build's row is left out then: its
# element-wise loops pick their AVX-512 versions at run time, which no switch turns off.
set -u
cd "$(dirname "$0")/.." || exit 1
if grep -q avx512f /proc/cpuinfo 2>/dev/null; then core=SkylakeX; isa="AVX-512"
elif grep -q avx2 /proc/cpuinfo 2>/dev/null; then core=Haswell; isa="AVX2"
else core=""; isa="neither AVX2 nor AVX-512"; fi
deit=./deit ptenv=""
make -s deit >/dev/null || exit 1
cc -O3 deit.c -lm -o /tmp/deit_plain || exit 1
if [ "${ISA:-}" = avx2 ]; then
    grep -q avx2 /proc/cpuinfo 2>/dev/null || { echo "ISA=avx2: this processor has no AVX2" >&2; exit 1; }
    core=Haswell isa="held to AVX2 (ISA=avx2)" deit=/tmp/deit_avx2
    ptenv="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
    cc -O3 -march=x86-64-v3 -fopenmp -fno-math-errno deit.c -lm -o /tmp/deit_avx2 || exit 1
    export DEIT_KERNEL=avx2 # the tile deit.c picks on a processor without AVX-512
fi
dirty=$(git status --porcelain -- deit.c deit.h 2>/dev/null | wc -l)
echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(lscpu 2>/dev/null | grep -m1 'Model name' | tr -s ' '); $(nproc) CPUs;" \
     "$isa; deit.c at $(git rev-parse --short HEAD 2>/dev/null) (+ uncommitted: $dirty)"
torch=0
/usr/bin/python3 -c "import torch" 2>/dev/null && torch=1
[ $torch = 1 ] || echo "# PyTorch rows skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)"
# python3-torch alone brings the netlib reference BLAS, 15x slower than OpenBLAS: no PyTorch rows then
if [ $torch = 1 ] && ! ls /usr/lib/*/openblas-openmp/libblas.so.3 > /dev/null 2>&1; then
    torch=0; echo "# PyTorch rows skipped: no OpenMP OpenBLAS (apt-get install libopenblas0-openmp)"
fi
# run LABEL NET COMMAND...: the label names the table row; NET is the net whose img/s it reads
run() {
    label=$1 net=$2; shift 2
    echo "## row $label $net"
    echo "\$ $*"
    "$@" 2>&1
}
torch_run() { [ $torch = 1 ] && run "$@"; }
pt="env OPENBLAS_CORETYPE=$core $ptenv /usr/bin/python3 dev/bench_torch.py"
small="--dim 16 --depth 1 --heads 2" # the teacher rows: a token student, so that the teacher's time is what is shown
log=$(mktemp)
r=1
while [ $r -le "${ROUNDS:-2}" ]; do
    echo "# round $r, $(date -u '+%H:%M:%S UTC')"
    for t in 2 1; do
        run "deit.c|DeiT-Ti/4|$t" student $deit bench --threads $t --repeats 5
        torch_run "PyTorch|DeiT-Ti/4|$t" torch $pt --threads $t --skip gemm
    done
    [ "${ISA:-}" = avx2 ] || run "plain|DeiT-Ti/4|1" student /tmp/deit_plain bench --threads 1 --repeats 5
    for t in 2 1; do
        run "deit.c|ResNet-20|$t" resnet20 $deit bench --threads $t --repeats 3 --batch 128 --teacher resnet20 $small
        torch_run "PyTorch|ResNet-20|$t" torch $pt --net resnet20 --batch 128 --threads $t --skip infer
        run "deit.c|airbench|$t" airbench $deit bench --threads $t --repeats 3 --batch 512 --teacher airbench $small
        torch_run "PyTorch|airbench|$t" torch $pt --net airbench --batch 512 --threads $t
    done
    r=$((r + 1))
done 2>&1 | tee "$log"
echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC') end"
echo
echo "# each row's best round (worst round), img/s, read from the lines above"
echo "| code | net | threads | train | inference |"
echo "| --- | --- | --- | --- | --- |"
awk '
function keep(kind, v) {
    k = row SUBSEP kind
    if (!(k in best) || v > best[k]) best[k] = v
    if (!(k in worst) || v < worst[k]) worst[k] = v
}
function cell(kind) { k = row SUBSEP kind; return (k in best) ? sprintf("%.1f (%.1f)", best[k], worst[k]) : "" }
/^## row / { row = $3; net = $4; if (!(row in seen)) { seen[row] = 1; order[++n] = row }; next }
net == "torch" && /^metric train img_per_s=/ { split($3, f, "="); keep("train", f[2]) }
net == "torch" && /^metric infer img_per_s=/ { split($3, f, "="); keep("infer", f[2]) }
net != "torch" && $1 == net && $2 == "train" && $3 == "step" { keep("train", $4) }
net != "torch" && $1 == net && $2 == "inference" { keep("infer", $3) }
END {
    for (i = 1; i <= n; i++) {
        row = order[i]; split(row, part, "|")
        printf "| %s | %s | %s | %s | %s |\n", part[1], part[2], part[3], cell("train"), cell("infer")
    }
}' "$log"
rm -f "$log"
