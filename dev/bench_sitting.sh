#!/bin/sh
# One benchmark sitting: the README's speed table, every row in a few minutes, in one go.
#   sh dev/bench_sitting.sh > experiments/logs/bench_sitting_YYYYMMDD.out 2>&1
# Run it with nothing else on the machine (a second job makes OpenMP's threads wait on each
# other, and the numbers mean nothing). It builds ./deit (make) and /tmp/deit_plain (the user's
# plain `cc -O3 deit.c -lm`), then times deit.c and PyTorch (dev/bench_torch.py) on the same
# nets, at 2 threads and at 1. PyTorch runs with OpenBLAS set to the kernels of this processor
# (OPENBLAS_CORETYPE: SkylakeX where AVX-512 is, Haswell where AVX2 is); bench_torch.py prints
# the core OpenBLAS used. Without python3-torch the PyTorch rows are skipped (said so).
set -u
cd "$(dirname "$0")/.." || exit 1
if grep -q avx512f /proc/cpuinfo 2>/dev/null; then core=SkylakeX; isa="AVX-512"
elif grep -q avx2 /proc/cpuinfo 2>/dev/null; then core=Haswell; isa="AVX2"
else core=""; isa="neither AVX2 nor AVX-512"; fi
make -s deit >/dev/null || exit 1
cc -O3 deit.c -lm -o /tmp/deit_plain || exit 1
dirty=$(git status --porcelain -- deit.c deit.h 2>/dev/null | wc -l)
echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC'); $(lscpu 2>/dev/null | grep -m1 'Model name' | tr -s ' '); $(nproc) CPUs;" \
     "$isa; deit.c at $(git rev-parse --short HEAD 2>/dev/null) (+ uncommitted: $dirty)"
run() { echo "\$ $*"; "$@" 2>&1; }
small="--dim 16 --depth 1 --heads 2" # the teacher rows: a token student, so that the teacher's time is what is shown
for t in 2 1; do
    run ./deit bench --threads $t --repeats 5
done
run /tmp/deit_plain bench --threads 1 --repeats 5
for t in 2 1; do
    run ./deit bench --threads $t --repeats 3 --batch 128 --teacher resnet20 $small
    run ./deit bench --threads $t --repeats 3 --batch 512 --teacher airbench $small
done
if /usr/bin/python3 -c "import torch" 2>/dev/null; then
    for t in 2 1; do
        run env OPENBLAS_CORETYPE=$core /usr/bin/python3 dev/bench_torch.py --threads $t --skip gemm
        run env OPENBLAS_CORETYPE=$core /usr/bin/python3 dev/bench_torch.py --net resnet20 --batch 128 --threads $t --skip infer
        run env OPENBLAS_CORETYPE=$core /usr/bin/python3 dev/bench_torch.py --net airbench --batch 512 --threads $t
    done
else
    echo "# PyTorch rows skipped: /usr/bin/python3 cannot import torch (apt-get install python3-torch)"
fi
echo "# $(date -u '+%Y-%m-%d %H:%M:%S UTC') end"
