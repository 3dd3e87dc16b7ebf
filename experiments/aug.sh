#!/bin/sh
# Distillation under DeiT's augmentation: the quick student with --aug deit (RandAugment,
# mixup/cutmix, random erasing) instead of crop + flip, without distillation and as DeiT
# (class + distillation token, hard) from the 80-epoch ResNet-20. With crop + flip that teacher
# labels its nearly memorised training images almost as the true labels do (see the README's
# Teacher choice); on heavily augmented images its labels say more.
#
#   BUDGET=quick PARALLEL=1 experiments/aug.sh
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
AUG_RECIPE=$(echo "$RECIPE" | sed 's/--aug basic/--aug deit/')
TEACHER=experiments/runs/teacher_resnet20_long_$BUDGET.bin
echo "augmentation, budget $BUDGET: student $STUDENT, $EPOCHS epochs, recipe $AUG_RECIPE; teacher $TEACHER"
echo "expected time on a 2-core machine: 70-90 min per row on one core, both rows at once with PARALLEL=1"
run "teacher_resnet20_long_$BUDGET" "$TEACHER_LONG_EPOCHS" ./deit teacher --arch resnet20 $TEACHER_RECIPE --seed 1
none() { run "aug_${BUDGET}_none" "$EPOCHS" ./deit train $STUDENT $AUG_RECIPE --distill none --dist-token 0 --seed 1; }
dist() { run "aug_${BUDGET}_hard_dist" "$EPOCHS" ./deit train $STUDENT $AUG_RECIPE --teacher "$TEACHER" --distill hard --dist-token 1 --seed 1; }
if [ "${PARALLEL:-0}" = 1 ]; then THREADS_ARG="--threads 1"; none & dist; wait; else none; dist; fi
for n in none hard_dist; do
    [ -f "experiments/logs/aug_${BUDGET}_$n.csv" ] && echo "aug_${BUDGET}_$n: $(acc "aug_${BUDGET}_$n" 5)% (both heads), class $(acc "aug_${BUDGET}_$n" 6), dist $(acc "aug_${BUDGET}_$n" 7)"
done
