#!/bin/sh
# "Inside the model" (the paper's analyses) on the checkpoints of table3, written to
# experiments/results/inside_$BUDGET.md and experiments/results/attention/:
#   ./deit tokens    class vs distillation token similarity (per block), heads' weights
#   ./deit compare   disagreement between ground truth, the teacher, the plain DeiT and the
#                    distilled DeiT's heads (paper Table 4)
#   ./deit attention where the class and distillation tokens attend, for a few test images
#   ./deit bench --table  throughput and parameters of DeiT-Ti/S/B and the teachers, with the
#                    accuracy of the checkpoints (paper Table 1 / Fig. 1)
#
#   BUDGET=quick experiments/inside.sh
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
T=experiments/runs/$TEACHER_NAME.bin N=experiments/runs/t3_${BUDGET}_none.bin D=experiments/runs/t3_${BUDGET}_hard_dist.bin
[ -f "$T" ] || cp "experiments/checkpoints/$TEACHER_NAME.bin" "$T" 2>/dev/null # the committed teacher
for f in "$T" "$N" "$D"; do [ -f "$f" ] || { echo "need $f: run experiments/table3.sh first" >&2; exit 1; }; done
IMAGES=${IMAGES:-"0 3 7 12"}
res=experiments/results/inside_$BUDGET.md
mkdir -p experiments/results/attention
{
    echo "# Inside the model ($BUDGET budget)"
    echo
    echo "Produced by \`BUDGET=$BUDGET experiments/inside.sh\` from the table3 checkpoints."
    echo
    echo "## ./deit tokens --ckpt $D"
    echo '```'
    ./deit tokens --ckpt "$D" $THREADS_ARG 2>&1
    echo '```'
    echo
    echo "## ./deit compare $T $N $D"
    echo '```'
    ./deit compare $THREADS_ARG "$T" "$N" "$D" 2>&1
    echo '```'
    for i in $IMAGES; do
        echo
        echo "## ./deit attention --ckpt $D --image $i"
        echo '```'
        mkdir -p "experiments/results/attention/image$i"
        ./deit attention --ckpt "$D" --image "$i" --out "experiments/results/attention/image$i" --zoom 4 $THREADS_ARG 2>&1
        echo '```'
    done
    echo
    echo "## ./deit bench --table 1 $T $N $D"
    echo '```'
    ./deit bench --table 1 $THREADS_ARG "$T" "$N" "$D" 2>&1
    echo '```'
} > "$res"
cat "$res"
