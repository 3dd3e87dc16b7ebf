#!/bin/sh
# The airbench teacher (deit.c I.6b, `./deit teacher --arch airbench` with its default recipe),
# once per seed; then each checkpoint's test accuracy without and with test-time augmentation
# (--tta 0, 1, 2) and its accuracy on training images (data_batch_1 as the test split: how much
# it has memorised). Table: experiments/results/teachers_airbench.md.
#   SEEDS="1 2 3" THREADS=2 sh experiments/airbench.sh
# Each run takes about 50 minutes on 2 AVX-512 cores (the .out logs give the time of each).
# Resumable like every driver here (lib.sh): a finished seed is skipped, a killed one resumes.
. "$(dirname "$0")/lib.sh"
SEEDS=${SEEDS:-"1 2 3"}
for s in $SEEDS; do
    case "$s" in *[!0-9]* | "") echo "SEEDS must be whole numbers, not '$s'" >&2; exit 2 ;; esac
    run teacher_airbench_seed$s 10 ./deit teacher --arch airbench --seed "$s"
done

# The training images as a "test set": a directory whose test_batch.bin is data_batch_1.bin.
data=${DEIT_DATA:-data/cifar-10-batches-bin}
train_as_test=experiments/runs/train_as_test
mkdir -p "$train_as_test"
for i in 1 2 3 4 5; do cp -f "$data/data_batch_$i.bin" "$train_as_test/"; done
cp -f "$data/data_batch_1.bin" "$train_as_test/test_batch.bin"

table=experiments/results/teachers_airbench.md
{
    echo "| seed | test, no TTA | TTA 1 (mirror) | TTA 2 (6 views) | training images (data_batch_1), TTA 2 | training minutes | log |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
} > "$table"
# every finished seed (not only those of SEEDS); a checkpoint is evaluated once, again only when
# it is newer than its evaluations
done_seeds=""
for s in 1 2 3 $SEEDS; do
    case " $done_seeds " in *" $s "*) continue ;; esac
    name=teacher_airbench_seed$s bin=experiments/runs/teacher_airbench_seed$s.bin
    [ -f "$bin" ] || bin=experiments/checkpoints/$name.bin
    [ -f "$bin" ] && [ "$(last_epoch "experiments/logs/$name.csv")" -ge 10 ] || { echo "| $s | not finished | | | | | |" >> "$table"; continue; }
    done_seeds="$done_seeds $s"
    out=experiments/logs/${name}_eval.out
    if [ ! -f "$out" ] || [ "$bin" -nt "$out" ] || [ "$(grep -c '^accuracy:' "$out")" -lt 4 ]; then
        : > "$out"
        for t in 0 1 2; do
            echo "\$ ./deit eval $bin --tta $t $THREADS_ARG" >> "$out"
            ./deit eval "$bin" --tta "$t" $THREADS_ARG >> "$out" 2>&1
        done
        echo "\$ ./deit eval $bin --tta 2 --data $train_as_test $THREADS_ARG" >> "$out"
        ./deit eval "$bin" --tta 2 --data "$train_as_test" $THREADS_ARG >> "$out" 2>&1
    fi
    accs=$(awk '/^accuracy:/ { gsub("%", "", $2); printf "%s ", $2 }' "$out")
    set -- $accs
    echo "| $s | $1 | $2 | $3 | $4 | $(minutes "$name") | \`logs/$name.csv\`, \`logs/${name}_eval.out\` |" >> "$table"
done
# mean and spread (sample standard deviation, min-max) over the finished seeds
awk -F'|' '$2 ~ /^ [0-9]+ $/ && $3 ~ /[0-9]/ { n++; for (c = 3; c <= 6; c++) { v = $c + 0; s[c] += v; q[c] += v * v
        if (n == 1 || v < lo[c]) lo[c] = v; if (n == 1 || v > hi[c]) hi[c] = v } }
    END { if (n < 2) exit
          printf "| mean of %d (sd; min-max) |", n
          for (c = 3; c <= 6; c++) { m = s[c] / n; sd = sqrt((q[c] - n * m * m) / (n - 1)); printf " %.2f (%.2f; %.2f-%.2f) |", m, sd, lo[c], hi[c] }
          print " | |" }' "$table" > "$table.mean"
cat "$table.mean" >> "$table" && rm -f "$table.mean"
cat "$table"
