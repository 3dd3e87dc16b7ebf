#!/bin/sh
# Resume after kill -9 on real CIFAR-10 (issue "Train for real"): the same short distilled run
# twice with the same seed on one thread, once straight through and once killed with SIGKILL
# in the middle of an epoch and continued with --resume. Prints both logs and whether the
# final checkpoints are byte-identical.
#
#   experiments/resume_check.sh | tee experiments/logs/resume_check.out
#   (about 5 minutes on one free core, 8 on a busy one; needs the quick teacher)
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
TEACHER=experiments/runs/$TEACHER_NAME.bin
[ -f "$TEACHER" ] || { echo "no teacher $TEACHER: run experiments/table3.sh (ROWS=teacher) first" >&2; exit 1; }
ARGS="$STUDENT $RECIPE --teacher $TEACHER --distill hard --dist-token 1 --seed 7 --train-limit 5000 --epochs 3 --eval-every 3 --threads 1"
D=experiments/runs/resume_check
rm -rf "$D" && mkdir -p "$D"
echo "== straight: ./deit train $ARGS"
./deit train $ARGS --out "$D/straight.bin" --log "$D/straight.csv" > "$D/straight.out" 2>&1
echo "== killed: the same, SIGKILL during epoch 2 (20 s after epoch 1 is logged), then --resume"
./deit train $ARGS --out "$D/killed.bin" --log "$D/killed.csv" > "$D/killed.out" 2>&1 &
pid=$!
while [ "$(last_epoch "$D/killed.csv")" -lt 1 ]; do sleep 1; done
sleep 20
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
echo "   killed at: $(tail -n 1 "$D/killed.out")"
./deit train $ARGS --resume "$D/killed.bin" --log "$D/killed.csv" >> "$D/killed.out" 2>&1
for r in straight killed; do
    echo "-- $r.csv (epoch, step, lr, train loss, test acc mean/cls/dist, img/s, elapsed s)"
    cat "$D/$r.csv"
done
if cmp -s "$D/straight.bin" "$D/killed.bin"; then
    echo "RESULT: final checkpoints are byte-identical"
else
    echo "RESULT: final checkpoints differ"
    exit 1
fi
