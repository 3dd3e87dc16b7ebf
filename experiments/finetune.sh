#!/bin/sh
# Fine-tuning at a higher resolution (paper Sec. 6, "fine-tuning at different resolution"):
# the DeiT student of table3 (class + distillation token, hard distillation, 32x32) is
# fine-tuned at 48x48 (144 patches instead of 64), with its patch position embedding resized
# bicubically, and, for the comparison the paper makes, bilinearly. A control row fine-tunes at
# 32x32 for the same steps, so that the gain is not just "more training". Every row uses the
# true label and the teacher (hard distillation), as the paper does.
#
#   BUDGET=quick PARALLEL=1 experiments/finetune.sh
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
FROM=experiments/runs/t3_${BUDGET}_hard_dist.bin TEACHER=experiments/runs/$TEACHER_NAME.bin
[ -f "$FROM" ] && [ -f "$TEACHER" ] || { echo "need $FROM and $TEACHER: run experiments/table3.sh first" >&2; exit 1; }
if [ "$BUDGET" = quick ]; then FT_EPOCHS=1 FT_LR=1e-4; else FT_EPOCHS=30 FT_LR=5e-6; fi
FT="--init $FROM --teacher $TEACHER --distill hard --batch 128 --lr $FT_LR --min-lr 1e-6 --warmup 0 --aug basic --label-smoothing 0.1 --drop-path 0 --seed 1"
echo "fine-tune, budget $BUDGET: $FT_EPOCHS epoch(s) at lr $FT_LR from $FROM"
echo "expected time on a 2-core machine (quick): about 20 min per 48x48 epoch and 9 min per 32x32 epoch on one core"
if [ "${PARALLEL:-0}" = 1 ]; then
    THREADS_ARG="--threads 1"
    run "ft_${BUDGET}_48_bicubic" "$FT_EPOCHS" ./deit train $FT --img-size 48 --pos-interp bicubic &
    run "ft_${BUDGET}_48_bilinear" "$FT_EPOCHS" ./deit train $FT --img-size 48 --pos-interp bilinear
    wait
    run "ft_${BUDGET}_32" "$FT_EPOCHS" ./deit train $FT
else
    run "ft_${BUDGET}_48_bicubic" "$FT_EPOCHS" ./deit train $FT --img-size 48 --pos-interp bicubic
    run "ft_${BUDGET}_48_bilinear" "$FT_EPOCHS" ./deit train $FT --img-size 48 --pos-interp bilinear
    run "ft_${BUDGET}_32" "$FT_EPOCHS" ./deit train $FT
fi
res=experiments/results/finetune_$BUDGET.md
{
    echo "# Fine-tuning at a higher resolution ($BUDGET budget)"
    echo
    echo "From \`$FROM\` (trained at 32x32); $FT_EPOCHS epoch(s) of \`$FT\`."
    echo "Produced by \`BUDGET=$BUDGET experiments/finetune.sh\`. Test accuracy (%) of the averaged heads."
    echo
    echo "| model | resolution | position embedding | test acc. (%) |"
    echo "| --- | --- | --- | --- |"
    echo "| table3 DeiT (no fine-tuning) | 32 | - | $(acc "t3_${BUDGET}_hard_dist" 5) |"
    echo "| + fine-tuned at 32 (control) | 32 | - | $(acc "ft_${BUDGET}_32" 5) |"
    echo "| + fine-tuned at 48 | 48 | bilinear | $(acc "ft_${BUDGET}_48_bilinear" 5) |"
    echo "| + fine-tuned at 48 | 48 | bicubic | $(acc "ft_${BUDGET}_48_bicubic" 5) |"
} > "$res"
cat "$res"
