#!/bin/sh
# Distillation under DeiT's augmentation: the quick student with --aug deit (RandAugment,
# mixup/cutmix, random erasing) instead of crop + flip, without distillation and as DeiT
# (class + distillation token, hard) from a teacher: by default the 80-epoch ResNet-20. With
# crop + flip that teacher labels its nearly memorised training images almost as the true labels
# do (see the README's Teacher choice); on heavily augmented images its labels say more.
#
#   BUDGET=quick PARALLEL=1 experiments/aug.sh
#   AUG_TEACHERS="resnet20_long resnet20 airbench" ...   the teachers (budgets.sh's names): one
#       distilled row each, aug_BUDGET_hard_dist for resnet20_long, aug_BUDGET_hard_dist_NAME else
. "$(dirname "$0")/lib.sh"
. experiments/budgets.sh
AUG_RECIPE=$(echo "$RECIPE" | sed 's/--aug basic/--aug deit/')
AUG_TEACHERS=${AUG_TEACHERS:-resnet20_long}
echo "augmentation, budget $BUDGET: student $STUDENT, $EPOCHS epochs, recipe $AUG_RECIPE; teachers $AUG_TEACHERS"
echo "expected time on a 2-core machine: 70-90 min per row on one core, two rows at once with PARALLEL=1"
aug_name() { if [ "$1" = resnet20_long ]; then echo "aug_${BUDGET}_hard_dist"; else echo "aug_${BUDGET}_hard_dist_$1"; fi; }
for t in $AUG_TEACHERS; do train_teacher "$t"; done
row() { # none, or a teacher's name
    if [ "$1" = none ]; then
        run_row "aug_${BUDGET}_none" "$EPOCHS" ./deit train $STUDENT $AUG_RECIPE --distill none --dist-token 0 --seed 1
    else
        run_row "$(aug_name "$1")" "$EPOCHS" ./deit train $STUDENT $AUG_RECIPE --teacher "$(teacher_file "$1")" --distill hard --dist-token 1 --seed 1
    fi
}
in_pairs row none $AUG_TEACHERS
res=experiments/results/aug_$BUDGET.md
{
    echo "# Distillation under DeiT's augmentation, CIFAR-10 ($BUDGET budget)"
    echo
    echo "Student: \`$STUDENT\`, $EPOCHS epochs, seed 1; crop + flip: \`$RECIPE\`, DeiT's: \`$AUG_RECIPE\`."
    echo "Produced by \`BUDGET=$BUDGET experiments/aug.sh\`; the crop + flip rows are table3's and teachers.sh's."
    echo
    echo "| teacher (test acc. %) | augmentation | no distillation | DeiT, class head | DeiT, distillation head | DeiT, both heads | gain |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for t in resnet20_long resnet20 airbench; do
        tn=$(basename "$(teacher_file "$t")" .bin)
        [ -f "experiments/logs/$tn.csv" ] || continue
        for pair in "crop + flip:t3_${BUDGET}_none:$(student_name "$t")" "DeiT's:aug_${BUDGET}_none:$(aug_name "$t")"; do
            label=${pair%%:*} rest=${pair#*:}
            a=${rest%%:*} b=${rest#*:}
            [ -f "experiments/logs/$a.csv" ] && [ -f "experiments/logs/$b.csv" ] || continue
            gain=- # only once the distilled row has all its epochs
            [ "$(last_epoch "experiments/logs/$b.csv")" -ge "$EPOCHS" ] && gain=$(awk -v x="$(acc "$b" 5)" -v y="$(acc "$a" 5)" 'BEGIN { printf "%+.2f", x - y }')
            echo "| $t ($(acc "$tn" 5)) | $label | $(acc "$a" 5) | $(acc "$b" 6) | $(acc "$b" 7) | $(final "$b" 5 "$EPOCHS") | $gain |"
        done
    done
} > "$res"
cat "$res"
set --
[ -f "experiments/logs/aug_${BUDGET}_none.csv" ] && set -- "none, DeiT aug=experiments/logs/aug_${BUDGET}_none.csv"
[ -f "experiments/logs/t3_${BUDGET}_none.csv" ] && set -- "$@" "none, crop+flip=experiments/logs/t3_${BUDGET}_none.csv"
for t in resnet20_long resnet20 airbench; do
    [ -f "experiments/logs/$(aug_name "$t").csv" ] && set -- "$@" "from $t, DeiT aug=experiments/logs/$(aug_name "$t").csv"
    [ -f "experiments/logs/$(student_name "$t").csv" ] && set -- "$@" "from $t, crop+flip=experiments/logs/$(student_name "$t").csv"
done
[ $# -gt 0 ] && experiments/plot.sh "experiments/results/aug_$BUDGET.svg" \
    "DeiT's hard distillation, crop + flip vs DeiT's augmentation ($BUDGET budget)" "$@"
exit 0
