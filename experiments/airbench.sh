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
for s in $SEEDS; do
    name=teacher_airbench_seed$s bin=experiments/runs/teacher_airbench_seed$s.bin
    [ -f "$bin" ] || { echo "| $s | not run | | | | | |" >> "$table"; continue; }
    out=experiments/logs/${name}_eval.out
    : > "$out"
    for t in 0 1 2; do
        echo "\$ ./deit eval $bin --tta $t $THREADS_ARG" >> "$out"
        ./deit eval "$bin" --tta "$t" $THREADS_ARG >> "$out" 2>&1
    done
    echo "\$ ./deit eval $bin --tta 2 --data $train_as_test $THREADS_ARG" >> "$out"
    ./deit eval "$bin" --tta 2 --data "$train_as_test" $THREADS_ARG >> "$out" 2>&1
    accs=$(awk '/^accuracy:/ { gsub("%", "", $2); printf "%s ", $2 }' "$out")
    set -- $accs
    echo "| $s | $1 | $2 | $3 | $4 | $(minutes "$name") | \`logs/$name.csv\`, \`logs/${name}_eval.out\` |" >> "$table"
done
cat "$table"
