#!/bin/sh
# The paper's Table 3 (distillation ablation) on CIFAR-10: a teacher, then the same student
# trained with no distillation, soft distillation, hard distillation (class token only) and the
# class + distillation token with hard distillation (reported by class head, distillation head
# and both heads averaged).
#
#   BUDGET=quick experiments/table3.sh     # about 3 h on 2 cores for the students (see below)
#   BUDGET=paper experiments/table3.sh     # DeiT-Ti/4, 300 epochs, the paper's recipe
#
# Re-running skips finished rows and resumes an interrupted one. Set ROWS="none hard" (etc.) to
# run only some rows, and PARALLEL=1 to run two rows at a time with one thread each (faster on
# a 2-core machine than one row with two threads). SEED=2 (etc.) trains the students again with
# another seed, as runs t3_<budget>_<row>_seed2 and table table3_<budget>_seed2.md, from the same
# (seed-1) teacher: the spread between seeds is the noise a row's difference must beat.
. "$(dirname "$0")/lib.sh"

. experiments/budgets.sh
ROWS=${ROWS:-"teacher none soft hard_cls hard_dist"}
seed_suffix # SEED, and SFX: run and table names of seed 1 have no suffix
t3() { echo "t3_${BUDGET}_$1$SFX"; } # t3 ROW: the run (checkpoint and log) name of a student row

echo "table3, budget $BUDGET: student $STUDENT, $EPOCHS epochs; teacher $TEACHER_ARCH $TEACHER_EPOCHS epochs"
echo "expected time on a 2-core machine: $TABLE3_TIME"

TEACHER=experiments/runs/$TEACHER_NAME.bin
row() {
    case $1 in
    teacher) run "$TEACHER_NAME" "$TEACHER_EPOCHS" ./deit teacher --arch "$TEACHER_ARCH" $TEACHER_RECIPE --seed 1 ;;
    none) run "$(t3 none)" "$EPOCHS" ./deit train $STUDENT $RECIPE --distill none --dist-token 0 --seed "$SEED" ;;
    # soft: the paper's "usual distillation" row used tau 3 and lambda (--alpha) 0.1
    soft) run "$(t3 soft)" "$EPOCHS" ./deit train $STUDENT $RECIPE --teacher "$TEACHER" --distill soft --alpha 0.1 --tau 3 --dist-token 0 --seed "$SEED" ;;
    hard_cls) run "$(t3 hard_cls)" "$EPOCHS" ./deit train $STUDENT $RECIPE --teacher "$TEACHER" --distill hard --dist-token 0 --seed "$SEED" ;;
    hard_dist) run "$(t3 hard_dist)" "$EPOCHS" ./deit train $STUDENT $RECIPE --teacher "$TEACHER" --distill hard --dist-token 1 --seed "$SEED" ;;
    *) echo "unknown row $1" >&2; exit 2 ;;
    esac
}

students=""
for r in $ROWS; do
    if [ "$r" = teacher ]; then row teacher; else students="$students $r"; fi
done
in_pairs row $students

# ---- the table ------------------------------------------------------------------------------
res=experiments/results/table3_$BUDGET$SFX.md
cell() { final "$1" "$2" "$EPOCHS"; } # cell RUN COLUMN: a student row's result
{
    echo "# Table 3 on CIFAR-10 ($BUDGET budget)"
    echo
    echo "Student: \`$STUDENT\`, $EPOCHS epochs, recipe \`$RECIPE\`, seed $SEED${SFX:+ (the teacher: seed 1)}."
    echo "Teacher: $TEACHER_ARCH, $TEACHER_EPOCHS epochs (\`$TEACHER_RECIPE\`)."
    echo "Produced by \`${SFX:+SEED=$SEED }BUDGET=$BUDGET experiments/table3.sh\`; numbers are the test accuracy (%) after the last epoch."
    echo
    echo "| method | class token | distillation token | test acc. (%) | train minutes |"
    echo "| --- | --- | --- | --- | --- |"
    echo "| teacher ($TEACHER_ARCH) | | | $(final "$TEACHER_NAME" 5 "$TEACHER_EPOCHS") | $(minutes "$TEACHER_NAME" 2>/dev/null || echo -) |"
    echo "| no distillation | yes | no | $(cell "$(t3 none)" 5) | $(minutes "$(t3 none)" 2>/dev/null || echo -) |"
    echo "| usual (soft) distillation | yes | no | $(cell "$(t3 soft)" 5) | $(minutes "$(t3 soft)" 2>/dev/null || echo -) |"
    echo "| hard distillation | yes | no | $(cell "$(t3 hard_cls)" 5) | $(minutes "$(t3 hard_cls)" 2>/dev/null || echo -) |"
    echo "| DeiT: class embedding (class head) | yes | yes | $(cell "$(t3 hard_dist)" 6) | $(minutes "$(t3 hard_dist)" 2>/dev/null || echo -) |"
    echo "| DeiT: distillation embedding (dist. head) | yes | yes | $(cell "$(t3 hard_dist)" 7) | |"
    echo "| DeiT: class + distillation (both heads) | yes | yes | $(cell "$(t3 hard_dist)" 5) | |"
} > "$res"
cat "$res"

# ---- the learning curves ----------------------------------------------------------------------
set --
for spec in "no distillation=$(t3 none)" "soft=$(t3 soft)" "hard (class token)=$(t3 hard_cls)" \
    "DeiT class head=$(t3 hard_dist):6" "DeiT dist. head=$(t3 hard_dist):7" "DeiT both heads=$(t3 hard_dist)"; do
    label=${spec%%=*} run_col=${spec#*=} rname=${run_col%%:*}
    col=5; [ "$rname" != "$run_col" ] && col=${run_col#*:}
    [ -f "experiments/logs/$rname.csv" ] && set -- "$@" "$label=experiments/logs/$rname.csv:$col"
done
if [ $# -gt 0 ]; then
    experiments/plot.sh "experiments/results/table3_$BUDGET$SFX.svg" "Table 3 on CIFAR-10, $BUDGET budget ($EPOCHS epochs${SFX:+, seed $SEED})" "$@"
fi
