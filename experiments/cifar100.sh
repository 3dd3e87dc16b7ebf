#!/bin/sh
# Table 3's main rows on CIFAR-100: a ResNet-20 teacher, then no distillation and DeiT (class +
# distillation token, hard distillation). Needs the CIFAR-100 binary files:
#   ./cifar_download.sh cifar100        (or --from cifar-100-binary.tar.gz)
#
#   BUDGET=quick PARALLEL=1 experiments/cifar100.sh
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
D=${CIFAR100:-data/cifar-100-binary}
[ -f "$D/train.bin" ] || { echo "no CIFAR-100 in $D: run ./cifar_download.sh cifar100 first" >&2; exit 1; }
echo "cifar100, budget $BUDGET: student $STUDENT, $EPOCHS epochs; teacher $TEACHER_ARCH $TEACHER_EPOCHS epochs"
echo "expected time on a 2-core machine: teacher about 2.5 h, then $TABLE3_TIME (two rows: half of it)"
run "c100_teacher_$BUDGET" "$TEACHER_EPOCHS" ./deit teacher --data "$D" --arch "$TEACHER_ARCH" $TEACHER_RECIPE --seed 1
T=experiments/runs/c100_teacher_$BUDGET.bin
if [ "${PARALLEL:-0}" = 1 ]; then
    THREADS_ARG="--threads 1"
    run "c100_${BUDGET}_none" "$EPOCHS" ./deit train --data "$D" $STUDENT $RECIPE --distill none --dist-token 0 --seed 1 &
    run "c100_${BUDGET}_hard_dist" "$EPOCHS" ./deit train --data "$D" $STUDENT $RECIPE --teacher "$T" --distill hard --dist-token 1 --seed 1
    wait
else
    run "c100_${BUDGET}_none" "$EPOCHS" ./deit train --data "$D" $STUDENT $RECIPE --distill none --dist-token 0 --seed 1
    run "c100_${BUDGET}_hard_dist" "$EPOCHS" ./deit train --data "$D" $STUDENT $RECIPE --teacher "$T" --distill hard --dist-token 1 --seed 1
fi
res=experiments/results/cifar100_$BUDGET.md
{
    echo "# CIFAR-100 ($BUDGET budget)"
    echo
    echo "Student: \`$STUDENT\`, $EPOCHS epochs, recipe \`$RECIPE\`, seed 1. Produced by \`BUDGET=$BUDGET experiments/cifar100.sh\`."
    echo
    echo "| method | test acc. (%) |"
    echo "| --- | --- |"
    echo "| teacher ($TEACHER_ARCH) | $(acc "c100_teacher_$BUDGET" 5) |"
    echo "| no distillation | $(acc "c100_${BUDGET}_none" 5) |"
    echo "| DeiT: class head | $(acc "c100_${BUDGET}_hard_dist" 6) |"
    echo "| DeiT: distillation head | $(acc "c100_${BUDGET}_hard_dist" 7) |"
    echo "| DeiT: both heads | $(acc "c100_${BUDGET}_hard_dist" 5) |"
} > "$res"
cat "$res"
