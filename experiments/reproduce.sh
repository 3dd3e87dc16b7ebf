#!/bin/sh
# Re-run one table3 row in a fresh clone of this repository and compare its final accuracy
# with the committed log (the issue's "a fresh clone reproduces a table row").
#
#   experiments/reproduce.sh [ROW] [DIR]
#     ROW  none (default) | soft | hard_cls | hard_dist   (a quick-budget table3 row)
#     DIR  where the clone goes (default: ../deit_fresh, beside this repository)
#   DATA=PATH   the CIFAR-10 binary directory or tarball for ./cifar_download.sh --from
#               (default: this repository's data/cifar-10-batches-bin, set up by ./cifar_download.sh;
#               without it, ../shared/data/cifar-10-batches-bin beside this repository)
#   THREADS=N   threads of the run (default 1)
#   STEPS=N     a trial: the row stops after N optimizer steps (lib.sh), and no comparison is made
#
# The clone is of the committed HEAD. Its copy of the row's committed log is deleted first, so
# the row really runs; the distilled rows use the committed teacher checkpoint
# (experiments/checkpoints/teacher_resnet20.bin). Re-running the command resumes an interrupted
# clone run. Ends by copying the clone's log to experiments/logs/reproduce_t3_quick_ROW.csv and
# printing both accuracies; exits 1 if they differ by more than 1 point.
set -eu
cd "$(dirname "$0")/.."
REPO=$(pwd)
ROW=${1:-none}
DIR=${2:-$REPO/../deit_fresh}
if [ -z "${DATA:-}" ]; then
    DATA=$REPO/data/cifar-10-batches-bin
    [ -d "$DATA" ] || DATA=$REPO/../shared/data/cifar-10-batches-bin
fi
case "$ROW" in none | soft | hard_cls | hard_dist) ;; *) echo "ROW must be none, soft, hard_cls or hard_dist, not '$ROW'" >&2; exit 2 ;; esac
NAME=t3_quick_$ROW
COL=5

[ -d "$DIR" ] || git clone -q "$REPO" "$DIR"
echo "reproduce: row $ROW in $DIR (commit $(git -C "$DIR" rev-parse --short HEAD))"
cd "$DIR"
./cifar_download.sh --from "$DATA"
make deit
if [ ! -f "experiments/runs/$NAME.bin" ]; then # not started yet: forget the committed result
    rm -f "experiments/logs/$NAME.csv" "experiments/logs/$NAME.out"
fi
if [ "$ROW" != none ]; then
    mkdir -p experiments/runs
    [ -f experiments/runs/teacher_resnet20.bin ] || cp experiments/checkpoints/teacher_resnet20.bin experiments/runs/
fi
BUDGET=quick ROWS=$ROW THREADS=${THREADS:-1} experiments/table3.sh > "experiments/logs/reproduce_$ROW.out" 2>&1 ||
    { tail -5 "experiments/logs/reproduce_$ROW.out"; exit 1; }

if [ -n "${STEPS:-}" ]; then # a trial (lib.sh's STEPS): the row stopped early, nothing to compare
    grep "^== " "experiments/logs/reproduce_$ROW.out" # the row: started, resuming or done
    echo "reproduce: stopped after $STEPS steps (STEPS); run again without STEPS to finish the row and compare"
    exit 0
fi
final() { awk -F, -v c="$2" 'NR > 1 { a = $c } END { print a }' "$1"; }
new=$(final "experiments/logs/$NAME.csv" $COL)
old=$(git -C "$REPO" show "HEAD:experiments/logs/$NAME.csv" | awk -F, -v c=$COL 'NR > 1 { a = $c } END { print a }')
cp "experiments/logs/$NAME.csv" "$REPO/experiments/logs/reproduce_$NAME.csv" # the evidence, beside the original
echo "reproduce: $NAME committed $old%, fresh clone $new% (log experiments/logs/reproduce_$NAME.csv)"
awk -v a="$old" -v b="$new" 'BEGIN { d = b - a; if (d < 0) d = -d; printf "reproduce: difference %.2f points: %s\n", d, d <= 1 ? "within 1 point" : "MORE than 1 point"; exit d > 1 }'
