#!/bin/sh
# What --teacher-tta buys the overnight student, and what it costs. The teacher's logits of every
# student step can average 1 (--teacher-tta 0), 2 (1) or 6 (2) views of the batch; each view is
# one more teacher forward per step. Each line below is the overnight row (b)'s command, stopped
# after a few steps (--steps; the output goes to /tmp): deit prints on how many of the augmented
# training images the teacher's top class was the target's top class (the rest is what the
# distillation head is told beyond the data), and the progress line gives the student's img/s.
# Then the same for each of DeiT's augmentations left out, at --teacher-tta 0: which of them
# makes the teacher disagree with the targets.
#   THREADS=1 sh experiments/teacher_tta.sh > experiments/logs/teacher_tta.out 2>&1
# About 15 minutes on one thread.
set -eu
cd "$(dirname "$0")/.."
[ -x ./deit ] || make deit
teacher=experiments/runs/teacher_airbench_seed1.bin
[ -f "$teacher" ] || cp experiments/checkpoints/teacher_airbench_seed1.bin "$teacher"
B="./deit train --model tiny --patch 4 --batch 128 --teacher $teacher --distill hard --dist-token 1 --seed 1 --threads ${THREADS:-1} --out /tmp/teacher_tta.bin --force 1"
one() { # STEPS FLAGS...: the agreement line and the last progress line's img/s
    steps=$1
    shift
    echo "\$ $B $* --steps $steps"
    $B "$@" --steps "$steps" 2>&1 | tr '\r' '\n' | grep -E "teacher's top class|^epoch 1/[0-9]+ step $steps/" |
        sed -e 's/ eta .*//' -e 's/^/  /'
}
echo "# $(date -u '+%F %H:%M UTC'), deit.c at $(git rev-parse --short HEAD 2>/dev/null)"
for tta in 0 1 2; do
    one 30 --aug deit --lr 2.5e-4 --warmup 3 --teacher-tta $tta
done
one 8 --aug basic
one 8 --aug deit --mixup 0 --cutmix 0
one 8 --aug deit --randaug 0
one 8 --aug deit --randaug 0 --erase 0
rm -f /tmp/teacher_tta.bin /tmp/teacher_tta.bin.state /tmp/teacher_tta.bin.flags
