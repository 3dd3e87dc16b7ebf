#!/bin/sh
# Which teacher? The same student (class + distillation token, hard distillation) distilled
# from ResNet-20, ResNet-56, ResNet-20x4 (widths 64/128/256) and from a DeiT student (the
# no-distillation row of table3), which the paper found a worse teacher than a convnet;
# resnet20_long and resnet20_short are ResNet-20 trained longer and shorter (80 and 15 epochs
# at the quick budget instead of 30).
#
#   BUDGET=quick PARALLEL=1 experiments/teachers.sh
# TEACHERS="resnet20 resnet56 resnet20w4 deit resnet20_long resnet20_short" picks the rows; STUDENTS=0 only trains
# the teachers. The quick budget trains
# ResNet-56 and ResNet-20x4 for fewer epochs than ResNet-20 (they cost 3x and 16x more per
# image); see the printed plan.
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
TEACHERS=${TEACHERS:-"resnet20 resnet20_short resnet20_long resnet56 resnet20w4 deit"}
EP20L=$TEACHER_LONG_EPOCHS EP20S=$TEACHER_SHORT_EPOCHS
if [ "$BUDGET" = quick ]; then
    EP56=15 EP20W4=6
else
    EP56=160 EP20W4=160
fi
echo "teachers, budget $BUDGET: student $STUDENT, $EPOCHS epochs"
echo "teachers: resnet20 $TEACHER_EPOCHS epochs (table3's), resnet56 $EP56 epochs, resnet20w4 $EP20W4 epochs, resnet20_long $EP20L epochs, resnet20_short $EP20S epochs, deit = table3's no-distillation student"
echo "expected time on a 2-core machine (measured at the quick budget, see experiments/logs/teacher_*.csv): ResNet-20 about 4.5 min per epoch, ResNet-56 about 30 and ResNet-20x4 65-77 (3x and 16x ResNet-20's FLOPs per image); each student row 75-170 min, longer with a bigger teacher (ResNet-20x4's student: 13 min per epoch on a fast machine, 35-45 on a slow one)"

teacher_file() {
    case $1 in
    resnet20) echo "experiments/runs/$TEACHER_NAME.bin" ;;
    deit) # table3's no-distillation student; else the committed quick one (reproduce.sh's re-run of that row)
        if [ -f "experiments/runs/t3_${BUDGET}_none.bin" ] || [ ! -f "experiments/checkpoints/reproduce_t3_${BUDGET}_none.bin" ]; then
            echo "experiments/runs/t3_${BUDGET}_none.bin"
        else
            echo "experiments/checkpoints/reproduce_t3_${BUDGET}_none.bin"
        fi ;;
    *) echo "experiments/runs/teacher_${1}_$BUDGET.bin" ;;
    esac
}
train_teacher() {
    case $1 in
    resnet20) run "$TEACHER_NAME" "$TEACHER_EPOCHS" ./deit teacher --arch resnet20 $TEACHER_RECIPE --seed 1 ;;
    resnet56) run "teacher_resnet56_$BUDGET" "$EP56" ./deit teacher --arch resnet56 $TEACHER_RECIPE --seed 1 ;;
    resnet20w4) run "teacher_resnet20w4_$BUDGET" "$EP20W4" ./deit teacher --arch resnet20w4 $TEACHER_RECIPE --seed 1 ;;
    resnet20_long) run "teacher_resnet20_long_$BUDGET" "$EP20L" ./deit teacher --arch resnet20 $TEACHER_RECIPE --seed 1 ;;
    resnet20_short) run "teacher_resnet20_short_$BUDGET" "$EP20S" ./deit teacher --arch resnet20 $TEACHER_RECIPE --seed 1 ;;
    deit) [ -f "$(teacher_file deit)" ] || { echo "no $(teacher_file deit): run experiments/table3.sh (ROWS=none) first" >&2; exit 1; } ;;
    esac
}
student_name() { if [ "$1" = resnet20 ]; then echo "t3_${BUDGET}_hard_dist"; else echo "tt_${BUDGET}_$1"; fi; }
student() {
    name=$(student_name "$1")
    run "$name" "$EPOCHS" ./deit train $STUDENT $RECIPE --teacher "$(teacher_file "$1")" --distill hard --dist-token 1 --seed 1
}
for t in $TEACHERS; do train_teacher "$t"; done
[ "${STUDENTS:-1}" = 0 ] && exit 0
set -- $TEACHERS
while [ $# -gt 0 ]; do
    a=$1; shift
    if [ "${PARALLEL:-0}" = 1 ] && [ $# -gt 0 ]; then
        b=$1; shift; THREADS_ARG="--threads 1"; student "$a" & student "$b"; wait
    else
        student "$a"
    fi
done

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
    for t in resnet20 resnet20_short resnet20_long resnet56 resnet20w4 deit; do
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
for t in resnet20 resnet20_short resnet20_long resnet56 resnet20w4 deit; do
    sn=$(student_name "$t")
    [ -f "experiments/logs/$sn.csv" ] && set -- "$@" "from $t=experiments/logs/$sn.csv"
done
[ $# -gt 0 ] && experiments/plot.sh "experiments/results/teachers_$BUDGET.svg" \
    "Teacher choice on CIFAR-10, $BUDGET budget (student curves)" "$@"
# and the convnet teachers' own curves
set --
for t in resnet20 resnet20_short resnet20_long resnet56 resnet20w4; do
    tn=$(basename "$(teacher_file "$t")" .bin)
    [ -f "experiments/logs/$tn.csv" ] && set -- "$@" "$t=experiments/logs/$tn.csv"
done
[ $# -gt 0 ] && experiments/plot.sh "experiments/results/teacher_curves_$BUDGET.svg" \
    "The convnet teachers on CIFAR-10, $BUDGET budget" "$@"
exit 0
