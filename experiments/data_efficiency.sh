#!/bin/sh
# Data efficiency: no distillation vs DeiT (class + distillation token, hard distillation) on
# 10%, 25%, 50% and 100% of the CIFAR-10 training set (class-balanced, --train-limit).
# Every row gets the same number of optimizer steps (the same images seen) as the 100% row:
# EPOCHS * 50000 / N epochs, with the warmup and the test interval (--eval-every) scaled the
# same way, so every row is tested after the same numbers of steps. The 100% rows are table3's.
#
#   BUDGET=quick PARALLEL=1 experiments/data_efficiency.sh
# FRACTIONS="10 25" picks the fractions, KINDS=none (or dist) one of the two rows of each.
# SEED=2 (etc.) trains the rows again with another seed, from the same (seed-1) teacher, as runs
# de_<budget>_<kind>_<percent>_seed2 and table data_efficiency_<budget>_seed2.md; its 100% rows
# are table3's of that seed (SEED=2 experiments/table3.sh).
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
seed_suffix
TEACHER=experiments/runs/$TEACHER_NAME.bin
[ -f "$TEACHER" ] || { echo "no teacher $TEACHER: run experiments/table3.sh (ROWS=teacher) first" >&2; exit 1; }
FRACTIONS=${FRACTIONS:-"10 25 50 100"}
echo "data efficiency, budget $BUDGET: student $STUDENT, $EPOCHS epochs' worth of steps per row, seed $SEED"
echo "expected time on a 2-core machine: each row costs as much as a table3 row ($TABLE3_TIME)"

# name PERCENT none|dist: the run (checkpoint and log) name of a row; the 100% rows are table3's
name() { [ "$1" = 100 ] && echo "t3_${BUDGET}_$([ "$2" = none ] && echo none || echo hard_dist)$SFX" || echo "de_${BUDGET}_$2_$1$SFX"; }
row() { # row PERCENT none|dist
    pct=$1 kind=$2 n=$((50000 * $1 / 100))
    ep=$((EPOCHS * 100 / pct)) wu=$((100 / pct))
    distill="--teacher $TEACHER --distill hard --dist-token 1"
    [ "$kind" = none ] && distill="--distill none --dist-token 0"
    limit="--train-limit $n"
    [ "$pct" = 100 ] && limit="" # table3's run, as table3.sh starts it (all images: no --train-limit)
    run "$(name "$pct" "$kind")" "$ep" ./deit train $STUDENT $RECIPE --warmup "$wu" --eval-every "$wu" $limit $distill --seed "$SEED"
}
KINDS=${KINDS:-"none dist"}
for pct in $FRACTIONS; do
    if [ "${PARALLEL:-0}" = 1 ] && [ "$KINDS" = "none dist" ]; then
        THREADS_ARG="--threads 1"
        row "$pct" none & row "$pct" dist; wait
    else
        for kind in $KINDS; do row "$pct" "$kind"; done
    fi
done

res=experiments/results/data_efficiency_$BUDGET$SFX.md
{
    echo "# Data efficiency on CIFAR-10 ($BUDGET budget)"
    echo
    echo "Student: \`$STUDENT\`, recipe \`$RECIPE\`, seed $SEED${SFX:+ (the teacher: seed 1)}; every row makes the optimizer steps of $EPOCHS epochs on"
    echo "the full set (epochs = $EPOCHS x 100 / percent). Teacher: $TEACHER_ARCH. Produced by \`${SFX:+SEED=$SEED }BUDGET=$BUDGET experiments/data_efficiency.sh\`."
    echo
    echo "| training images | epochs | no distillation | DeiT (class + distillation token) | gain |"
    echo "| --- | --- | --- | --- | --- |"
    for pct in 10 25 50 100; do
        ep=$((EPOCHS * 100 / pct))
        a=$(final "$(name $pct none)" 5 "$ep") b=$(final "$(name $pct dist)" 5 "$ep")
        g=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a !~ /^[0-9.]+$/ || b !~ /^[0-9.]+$/) print "-"; else printf "%+.2f", b - a }')
        echo "| $((50000 * pct / 100)) ($pct%) | $ep | $a | $b | $g |"
    done
} > "$res"
cat "$res"

# learning curves, in full-data epochs (a run on P% of the data makes 100/P of its epochs per full-data epoch)
set --
for pct in 10 25 50 100; do
    for kind in none dist; do
        n=$(name $pct $kind)
        [ -f "experiments/logs/$n.csv" ] && set -- "$@" "$([ $kind = none ] && echo "no distillation" || echo DeiT) $pct%=experiments/logs/$n.csv:5:$((100 / pct))"
    done
done
[ $# -gt 0 ] && XLABEL="full-data epochs" experiments/plot.sh "experiments/results/data_efficiency_$BUDGET$SFX.svg" \
    "Data efficiency on CIFAR-10, $BUDGET budget${SFX:+, seed $SEED}" "$@"
