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
res=experiments/results/aug_$BUDGET.md
{
    echo "# Distillation under DeiT's augmentation, CIFAR-10 ($BUDGET budget)"
    echo
    echo "Student: \`$STUDENT\`, $EPOCHS epochs, seed 1. Teacher: ResNet-20 trained $TEACHER_LONG_EPOCHS epochs ($(acc "teacher_resnet20_long_$BUDGET" 5)%)."
    echo "Produced by \`BUDGET=$BUDGET experiments/aug.sh\`; the crop + flip rows are table3's and teachers.sh's."
    echo
    echo "| augmentation | no distillation | DeiT, class head | DeiT, distillation head | DeiT, both heads | gain |"
    echo "| --- | --- | --- | --- | --- | --- |"
    for pair in "crop + flip (\`$RECIPE\`):t3_${BUDGET}_none:tt_${BUDGET}_resnet20_long" \
                "DeiT's (\`$AUG_RECIPE\`):aug_${BUDGET}_none:aug_${BUDGET}_hard_dist"; do
        label=${pair%%:*} rest=${pair#*:}
        a=${rest%%:*} b=${rest#*:}
        [ -f "experiments/logs/$a.csv" ] && [ -f "experiments/logs/$b.csv" ] || continue
        echo "| $label | $(acc "$a" 5) | $(acc "$b" 6) | $(acc "$b" 7) | $(acc "$b" 5) | $(awk -v x="$(acc "$b" 5)" -v y="$(acc "$a" 5)" 'BEGIN { printf "%+.2f", x - y }') |"
    done
} > "$res"
cat "$res"
set --
for n in none hard_dist; do
    [ -f "experiments/logs/aug_${BUDGET}_$n.csv" ] && set -- "$@" "$n, DeiT aug=experiments/logs/aug_${BUDGET}_$n.csv"
done
[ -f "experiments/logs/t3_${BUDGET}_none.csv" ] && set -- "$@" "none, crop+flip=experiments/logs/t3_${BUDGET}_none.csv"
[ -f "experiments/logs/tt_${BUDGET}_resnet20_long.csv" ] && set -- "$@" "hard_dist, crop+flip=experiments/logs/tt_${BUDGET}_resnet20_long.csv"
[ $# -gt 0 ] && experiments/plot.sh "experiments/results/aug_$BUDGET.svg" \
    "DeiT from the ${TEACHER_LONG_EPOCHS}-epoch ResNet-20, crop + flip vs DeiT's augmentation ($BUDGET budget)" "$@"
exit 0
