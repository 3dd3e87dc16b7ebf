#!/bin/sh
# The overnight recipe (README's two commands) and the comparison that tests the paper's claim.
#   STAGE=lr      sh experiments/overnight.sh   # the learning-rate search: 2-epoch runs of DeiT-Ti/4
#   STAGE=rows    sh experiments/overnight.sh   # rows (b) DeiT hard distillation, then (a) no distillation, 2 threads
#   STAGE=quick   SEED=1 sh experiments/overnight.sh  # rows (a), (b) at the quick size (6 x 128)
#   STAGE=all     sh experiments/overnight.sh   # the quick size's seed 1 in two lanes, rows, then seed 2
#   STAGE=all LANE=1 sh experiments/overnight.sh  # only the first lane's quick rows (LANE=2: the second)
#   STAGE=table   sh experiments/overnight.sh   # experiments/results/overnight.md from the logs
#   STAGE=inside  sh experiments/overnight.sh   # results/overnight_inside.md: ./deit tokens and compare on rows (a), (b)
# overnight_{none,dist}_attempt1 are the logs of the rows' first attempt, whose checkpoints were
# lost with its machine at epochs 22 and 27 (experiments/README.md). The teacher of every row is
# the committed airbench teacher (experiments/airbench.sh, seed 1).
# Runs are resumable (lib.sh): kill them any time, run the same line again. The quick and lr
# stages' runs go side by side, one thread each (THREADS=1): two trainings on two cores.
. "$(dirname "$0")/lib.sh"
THREADS_ARG="--threads ${THREADS:-1}"
teacher=experiments/runs/teacher_airbench_seed1.bin
[ -f "$teacher" ] || cp experiments/checkpoints/teacher_airbench_seed1.bin "$teacher"

# DeiT-Ti/4 with DeiT's augmentation (the defaults of --aug deit: RandAugment 2/9, mixup 0.8,
# CutMix 1.0, erasing 0.25, label smoothing 0.1, drop path 0.1), AdamW, wd 0.05, batch 128.
TINY="--model tiny --patch 4 --batch 128 --aug deit"
QUICK="--dim 128 --depth 6 --heads 4 --patch 4 --batch 128 --aug deit" # the quick size: 6 blocks, 128 wide
DIST="--teacher $teacher --distill hard --dist-token 1"
NONE="--distill none --dist-token 0"
# The recipe the learning-rate search chose (deit.c's defaults for ./deit train): lr 2.5e-4 at
# batch 128 after 3 warmup epochs, 40 epochs (about 7 hours of 2 AVX-512 cores with the teacher's 45 minutes; ~3x on AVX2).
RECIPE="--lr 2.5e-4 --warmup 3"
EPOCHS=40
QUICK_EPOCHS=25

case "${STAGE:-}" in
lr)
    # Each run is a whole 2-epoch schedule (half an epoch of warmup, cosine to 1e-5), so that its
    # peak learning rate is reached and held; the lr that learns fastest without spikes wins.
    for lr in ${LRS:-5e-4 1e-3 2e-3}; do
        run lr_tiny_$lr 2 ./deit train $TINY $DIST --lr "$lr" --warmup 0.5 --seed 1 &
    done
    wait
    ;;
rows)
    # (b), the README's student command, then (a), one after the other at 2 threads (THREADS=2
    # unless set): (b) is then the README's command exactly as a user runs it, its log's hours
    # are the README's, and its result comes first. Two one-thread runs side by side get no more
    # done in all (52 + 44 img/s for (a) + (b) against 90-100 for either alone at 2 threads).
    # Nothing else may run beside a 2-thread run (its threads wait for each other at every
    # barrier).
    THREADS_ARG="--threads ${THREADS:-2}"
    run overnight_dist $EPOCHS ./deit train $TINY $DIST $RECIPE --seed 1
    run overnight_none $EPOCHS ./deit train $TINY $NONE $RECIPE --seed 1
    ;;
all)
    # everything of the study, resumable: the quick size's rows of seed 1 in two lanes of one
    # thread each, (a) and (b); then STAGE=rows (DeiT-Ti (b), then (a), at 2 threads); then the
    # quick rows of seed 2 the same way. Seed 1 of the quick size first: a few hours, and an
    # unfinished one carried to another machine (carry.sh) is 14 MB instead of DeiT-Ti's 64 MB.
    # The DeiT-Ti rows before seed 2: they are the README's result. A distilled run is slower
    # (the teacher runs on every batch: at the quick size about 3.7 hours against 2.5 on one
    # thread), so the two lanes finish at different times.
    # LANE=1 runs the quick (a) of seed 1, then (b) of seed 2, alone on one thread; LANE=2 the
    # quick (b) of seed 1, then (a) of seed 2 (the other core then does something else).
    case "${LANE:-both}" in 1 | 2 | both) ;; *) echo "LANE must be 1 or 2, not '$LANE'" >&2; exit 2 ;; esac
    quick_none() { run overnight_quick_none$1 $QUICK_EPOCHS ./deit train $QUICK $NONE $RECIPE --seed "$2"; }
    quick_dist() { run overnight_quick_dist$1 $QUICK_EPOCHS ./deit train $QUICK $DIST $RECIPE --seed "$2"; }
    case "${LANE:-both}" in
    1) quick_none "" 1 && quick_dist _seed2 2 ;;
    2) quick_dist "" 1 && quick_none _seed2 2 ;;
    both)
        quick_none "" 1 &
        quick_dist "" 1 &
        wait
        STAGE=rows sh "$0"
        quick_dist _seed2 2 &
        quick_none _seed2 2 &
        wait
        ;;
    esac
    ;;
quick)
    # the seed spread at the quick size (6 blocks, 128 wide, 4 heads): (a) and (b), SEED=1 or 2
    seed_suffix
    run overnight_quick_none$SFX $QUICK_EPOCHS ./deit train $QUICK $NONE $RECIPE --seed "$SEED" &
    run overnight_quick_dist$SFX $QUICK_EPOCHS ./deit train $QUICK $DIST $RECIPE --seed "$SEED" &
    wait
    ;;
table)
    # results/overnight.md: every row's last logged epoch, its heads, and the epoch and hours at
    # which it first reached 60 / 70 / 80% test accuracy (averaged heads; hours: the log's wall
    # time of training, tests not counted, as the run went: the DeiT-Ti rows at 2 threads, the quick rows and the first attempt one thread each beside another run)
    table=experiments/results/overnight.md
    {
        echo "| row | epochs logged | test accuracy (heads averaged) | class head | distillation head | hours | epoch (hours) reaching 60 / 70 / 80% | log |"
        echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
        for name in lr_tiny_2.5e-4 lr_tiny_5e-4 lr_tiny_1e-3 lr_tiny_2e-3 overnight_none_attempt1 overnight_dist_attempt1 \
            overnight_none overnight_dist \
            overnight_quick_none overnight_quick_dist overnight_quick_none_seed2 overnight_quick_dist_seed2; do
            log=experiments/logs/$name.csv
            [ -f "$log" ] || continue
            awk -F, -v n="$name" 'NR > 1 && $5 != "" { e = $1; a = $5; c = $6; d = $7; h = $9 / 3600
                    for (k = 60; k <= 80; k += 10) if ($5 + 0 >= k && !(k in t)) t[k] = sprintf("%d (%.1f)", e, h) }
                END { printf "| %s | %d | %s | %s | %s | %.1f | %s / %s / %s | `logs/%s.csv` |\n", n, e, a, c, (d == "" ? "-" : d), h,
                      (60 in t ? t[60] : "-"), (70 in t ? t[70] : "-"), (80 in t ? t[80] : "-"), n }' "$log"
        done
    } > "$table"
    cat "$table"
    # test accuracy against hours of training, (a) and (b) at both sizes: the logs with a test so far
    set --
    for pair in "DeiT-Ti (a) no distillation=overnight_none" "DeiT-Ti (b) DeiT=overnight_dist" \
        "DeiT-Ti (a), first attempt=overnight_none_attempt1" "DeiT-Ti (b), first attempt=overnight_dist_attempt1" \
        "quick (a) seed 1=overnight_quick_none" "quick (b) seed 1=overnight_quick_dist" \
        "quick (a) seed 2=overnight_quick_none_seed2" "quick (b) seed 2=overnight_quick_dist_seed2"; do
        log=experiments/logs/${pair#*=}.csv
        [ -f "$log" ] && [ "$(awk -F, 'NR > 1 && $5 != ""' "$log" | wc -l)" -gt 0 ] && set -- "$@" "${pair%%=*}=$log"
    done
    if [ $# -gt 0 ]; then
        HOURS=1 sh experiments/plot.sh experiments/results/overnight_hours.svg \
            "The overnight recipe: test accuracy against hours of training (DeiT-Ti: 2 threads; quick size: one thread per run)" "$@"
    fi
    ;;
inside)
    # inside the model (the paper's Sec. 5.1 and Table 4), on the rows' checkpoints as they are:
    # the cosine of the class and distillation tokens after every block of (b), and how often
    # the teacher, (a) and (b)'s heads disagree on the 10,000 test images
    out=experiments/results/overnight_inside.md
    for row in none dist; do # the run's checkpoint, else the committed final one
        f=experiments/runs/overnight_$row.bin
        [ -f "$f" ] || f=experiments/checkpoints/overnight_$row.bin
        [ -f "$f" ] || { echo "no overnight_$row.bin in experiments/runs or checkpoints: run STAGE=rows first" >&2; exit 1; }
        eval "$row=\$f"
    done
    {
        echo "Made by \`STAGE=inside sh experiments/overnight.sh\` on $(date -u '+%F %H:%M UTC') from $none and $dist as they were then (their logs had $(last_epoch experiments/logs/overnight_none.csv) and $(last_epoch experiments/logs/overnight_dist.csv) epochs; a checkpoint written during an epoch is a little further on)."
        echo
        echo '```'
        echo "\$ ./deit tokens --ckpt $dist"
        ./deit tokens --ckpt "$dist" $THREADS_ARG 2>&1 | grep -v '^deit:'
        echo
        echo "\$ ./deit compare $teacher $none $dist"
        ./deit compare "$teacher" "$none" "$dist" $THREADS_ARG 2>&1 | grep -v '^deit:'
        echo '```'
    } > "$out"
    cat "$out"
    ;;
*) echo "STAGE must be lr, rows, all, quick, table or inside" >&2; exit 2 ;;
esac
