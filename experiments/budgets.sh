# The two budgets (sourced by the drivers after lib.sh).
#
# quick: a 6-block, width-128 DeiT with 4 heads and 4x4 patches (1.2 M parameters instead of
#   DeiT-Ti's 5.4 M), 10 epochs, AdamW lr 1e-3 at batch 128, 1 warmup epoch, cosine, label
#   smoothing 0.1, random crop + flip only (mixup, cutmix, RandAugment, erasing and stochastic
#   depth slow down learning in a 10-epoch run). With the current code a row trains at about
#   122 img/s (no distillation) to 96 img/s (distilled: the teacher also runs on every batch)
#   on one core while another run uses the other: 70-90 minutes per row, so the four student
#   rows of table3 take about 3 hours on 2 cores with PARALLEL=1.
#   The teacher is ResNet-20, 30 epochs of SGD (193 img/s on one core beside another run, 4.3
#   min per epoch: about 2.2 hours; trained once and shared by every quick study).
# paper: DeiT-Ti with 4x4 patches (dim 192, 12 blocks, 3 heads), 300 epochs, batch 64 (lr
#   5e-4 * 64/512), 5 warmup epochs, cosine, and the full DeiT recipe (the deit defaults: mixup
#   0.8, cutmix 1.0, RandAugment 2 ops m9, random erasing 0.25, label smoothing 0.1, stochastic
#   depth 0.1). The teacher is ResNet-56, 160 epochs.
if [ "$BUDGET" = quick ]; then
    STUDENT="--dim 128 --depth 6 --heads 4 --patch 4"
    RECIPE="--batch 128 --lr 1e-3 --warmup 1 --aug basic --label-smoothing 0.1 --drop-path 0"
    EPOCHS=${EPOCHS:-10}
    TEACHER_ARCH=resnet20 TEACHER_EPOCHS=30 TEACHER_NAME=teacher_resnet20
    TEACHER_LONG_EPOCHS=80 # ResNet-20 trained longer (teachers.sh's resnet20_long, aug.sh)
    TEACHER_SHORT_EPOCHS=15 # and shorter (teachers.sh's resnet20_short)
    TEACHER_RECIPE="--batch 128"
    TABLE3_TIME="students about 3-3.5 h with PARALLEL=1 (70-90 min per row on one core), plus about 2.2 h for the teacher if it is not trained yet"
else
    STUDENT="--model tiny --patch 4"
    RECIPE="--batch 64"
    EPOCHS=${EPOCHS:-300}
    TEACHER_ARCH=resnet56 TEACHER_EPOCHS=160 TEACHER_NAME=teacher_resnet56_paper
    TEACHER_LONG_EPOCHS=300
    TEACHER_SHORT_EPOCHS=40
    TEACHER_RECIPE="--batch 128"
    TABLE3_TIME="about 14 min per epoch per row at 60 img/s: 70 h per row, 12 days in all on 2 cores; scale by your machine's ./deit bench"
fi

# The teachers the studies name (teachers.sh, aug.sh): teacher_file NAME is its checkpoint,
# train_teacher NAME trains it if its log is not complete (lib.sh's run).
EP20L=$TEACHER_LONG_EPOCHS EP20S=$TEACHER_SHORT_EPOCHS
if [ "$BUDGET" = quick ]; then
    EP56=15 EP20W4=6
else
    EP56=160 EP20W4=160
fi

teacher_file() {
    case $1 in
    resnet20) echo "experiments/runs/$TEACHER_NAME.bin" ;;
    airbench) echo "experiments/runs/teacher_airbench_seed1.bin" ;;
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
    airbench) run teacher_airbench_seed1 10 ./deit teacher --arch airbench --seed 1 ;; # as airbench.sh
    deit) [ -f "$(teacher_file deit)" ] || { echo "no $(teacher_file deit): run experiments/table3.sh (ROWS=none) first" >&2; exit 1; } ;;
    esac
}
# the crop + flip student (table3's recipe, hard distillation, distillation token) of a teacher
student_name() { if [ "$1" = resnet20 ]; then echo "t3_${BUDGET}_hard_dist"; else echo "tt_${BUDGET}_$1"; fi; }
