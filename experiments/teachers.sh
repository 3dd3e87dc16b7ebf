#!/bin/sh
# Which teacher? The same student (class + distillation token, hard distillation) distilled
# from ResNet-20, ResNet-56, ResNet-20x4 (widths 64/128/256) and from a DeiT student (the
# no-distillation row of table3), which the paper found a worse teacher than a convnet;
# resnet20_long and resnet20_short are ResNet-20 trained longer and shorter (80 and 15 epochs
# at the quick budget instead of 30); airbench is the default teacher of ./deit teacher
# (airbench.sh's seed 1, 89.94%; its committed checkpoint is used when present).
#
#   BUDGET=quick PARALLEL=1 experiments/teachers.sh
# TEACHERS="resnet20 resnet56 resnet20w4 deit resnet20_long resnet20_short airbench" picks the rows; STUDENTS=0 only trains
# the teachers. The quick budget trains
# ResNet-56 and ResNet-20x4 for fewer epochs than ResNet-20 (they cost 3x and 16x more per
# image); see the printed plan.
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
TEACHERS=${TEACHERS:-"resnet20 resnet20_short resnet20_long resnet56 resnet20w4 deit airbench"}
echo "teachers, budget $BUDGET: student $STUDENT, $EPOCHS epochs"
echo "teachers: resnet20 $TEACHER_EPOCHS epochs (table3's), resnet56 $EP56 epochs, resnet20w4 $EP20W4 epochs, resnet20_long $EP20L epochs, resnet20_short $EP20S epochs, deit = table3's no-distillation student"
echo "expected time on a 2-core machine (measured at the quick budget, see experiments/logs/teacher_*.csv): ResNet-20 about 4.5 min per epoch, ResNet-56 about 30 and ResNet-20x4 65-77 (3x and 16x ResNet-20's FLOPs per image); each student row 75-170 min, longer with a bigger teacher (ResNet-20x4's student: 13 min per epoch on a fast machine, 35-45 on a slow one)"

student() {
    name=$(student_name "$1")
    run_row "$name" "$EPOCHS" ./deit train $STUDENT $RECIPE --teacher "$(teacher_file "$1")" --distill hard --dist-token 1 --seed 1
}
for t in $TEACHERS; do train_teacher "$t"; done
[ "${STUDENTS:-1}" = 0 ] && exit 0
in_pairs student $TEACHERS

res=experiments/results/teachers_$BUDGET.md
{
    echo "# Teacher choice on CIFAR-10 ($BUDGET budget)"
    echo
    echo "Student: \`$STUDENT\`, $EPOCHS epochs, recipe \`$RECIPE\`, class + distillation token, hard distillation, seed 1."
    echo "Produced by \`BUDGET=$BUDGET experiments/teachers.sh\`."
    echo
    echo "| teacher | teacher epochs | teacher acc. (%) | student acc. (%, both heads) |"
    echo "| --- | --- | --- | --- |"
    na=$([ -f "experiments/logs/t3_${BUDGET}_none.csv" ] && acc "t3_${BUDGET}_none" 5 || echo "not run")
    echo "| none (table3's no-distillation row) | - | - | $na |"
    for t in resnet20 resnet20_short resnet20_long resnet56 resnet20w4 deit airbench; do
        tf=$(teacher_file "$t"); tn=$(basename "$tf" .bin)
        sn=$(student_name "$t")
        ta=$([ -f "experiments/logs/$tn.csv" ] && acc "$tn" 5 || echo "not run")
        te=$(last_epoch "experiments/logs/$tn.csv"); [ "$te" = 0 ] && te=-
        sa=$(final "$sn" 5 "$EPOCHS") # an unfinished row says how far it got
        echo "| $t | $te | $ta | $sa |"
    done
} > "$res"
cat "$res"

# learning curves of the students (averaged heads), with the no-distillation row for reference
set --
[ -f "experiments/logs/t3_${BUDGET}_none.csv" ] && set -- "no teacher=experiments/logs/t3_${BUDGET}_none.csv"
for t in resnet20 resnet20_short resnet20_long resnet56 resnet20w4 deit airbench; do
    sn=$(student_name "$t")
    [ -f "experiments/logs/$sn.csv" ] && set -- "$@" "from $t=experiments/logs/$sn.csv"
done
[ $# -gt 0 ] && experiments/plot.sh "experiments/results/teachers_$BUDGET.svg" \
    "Teacher choice on CIFAR-10, $BUDGET budget (student curves)" "$@"
# and the convnet teachers' own curves
set --
for t in resnet20 resnet20_short resnet20_long resnet56 resnet20w4 airbench; do
    tn=$(basename "$(teacher_file "$t")" .bin)
    [ -f "experiments/logs/$tn.csv" ] && set -- "$@" "$t=experiments/logs/$tn.csv"
done
[ $# -gt 0 ] && experiments/plot.sh "experiments/results/teacher_curves_$BUDGET.svg" \
    "The convnet teachers on CIFAR-10, $BUDGET budget" "$@"
exit 0
