# Shared by the study drivers (sourced, not run). Only uses ./deit.
#
# run NAME EPOCHS ./deit ARGS...   trains one row:
#   - the checkpoint is experiments/runs/NAME.bin (+ .state), the log experiments/logs/NAME.csv
#     and the console output experiments/logs/NAME.out;
#   - a run whose log already has its last epoch is skipped (its checkpoint is copied from
#     experiments/checkpoints/ when runs/ lacks it: the finished teachers are committed there);
#   - a run with a .state file is continued with --resume (a killed run loses at most an epoch);
#     without one in runs/, a copy carried from another machine in experiments/carry/ is used;
#   - otherwise it starts from scratch.
# BUDGET=quick|paper picks the sizes; THREADS (default: all cores) is passed as --threads.
# STEPS=N stops every run after N optimizer steps in all (--steps N; a trial of a driver: run it
# again with a larger N and each run resumes; dev/readme_commands.sh does that).

set -eu
cd "$(dirname "$0")/.."
[ -x ./deit ] || make deit
mkdir -p experiments/runs experiments/logs experiments/results

BUDGET=${BUDGET:-quick}
case "$BUDGET" in quick | paper) ;; *) echo "BUDGET must be quick or paper, not '$BUDGET'" >&2; exit 2 ;; esac
THREADS_ARG=""
[ -n "${THREADS:-}" ] && THREADS_ARG="--threads $THREADS"
STEPS_ARG=""
[ -n "${STEPS:-}" ] && STEPS_ARG="--steps $STEPS"

# last_epoch LOG: the highest epoch number in a CSV log (0 if none)
last_epoch() {
    [ -f "$1" ] || { echo 0; return; }
    awk -F, 'NR > 1 && $1 + 0 > e { e = $1 + 0 } END { print e + 0 }' "$1"
}

run() {
    name=$1 epochs=$2
    shift 2
    bin=experiments/runs/$name.bin log=experiments/logs/$name.csv out=experiments/logs/$name.out
    kept=experiments/checkpoints/$name.bin # a finished run whose checkpoint is committed
    if [ ! -f "$bin" ] && [ -f "$kept" ] && [ "$(last_epoch "$log")" -ge "$epochs" ]; then
        echo "== $name: taking the committed checkpoint $kept"
        cp "$kept" "$bin"
    fi
    if [ -f "$bin" ] && [ "$(last_epoch "$log")" -ge "$epochs" ]; then
        echo "== $name: done ($epochs epochs in $log), skipped"
        return 0
    fi
    carry=experiments/carry/$name.bin # an unfinished run carried from another machine (carry.sh)
    if [ ! -f "$bin.state" ] && [ -f "$carry.state" ]; then
        echo "== $name: taking the carried checkpoint $carry"
        cp "$carry" "$bin" && cp "$carry.state" "$bin.state"
    fi
    if [ -f "$bin.state" ]; then
        echo "== $name: resuming $bin ($(last_epoch "$log")/$epochs epochs logged)"
        echo "=== resume $(date -u +%FT%TZ)" >> "$out"
        "$@" --epochs "$epochs" --resume "$bin" --log "$log" $THREADS_ARG $STEPS_ARG >> "$out" 2>&1
    else
        echo "== $name: $* --epochs $epochs"
        echo "=== start $(date -u +%FT%TZ): $* --epochs $epochs --out $bin" > "$out"
        "$@" --epochs "$epochs" --out "$bin" --log "$log" --force 1 $THREADS_ARG $STEPS_ARG >> "$out" 2>&1
    fi
    tail -n 2 "$out" | sed "s/^/   /"
}

# run_row NAME EPOCHS ./deit ARGS...: run, for a student row that no other run trains from: once
# its log has all its epochs it is skipped even where its checkpoint is not on this machine (the
# tables only read logs), instead of being trained again. teachers.sh and aug.sh.
run_row() {
    if [ ! -f "experiments/runs/$1.bin" ] && [ "$(last_epoch "experiments/logs/$1.csv")" -ge "$2" ]; then
        echo "== $1: done ($2 epochs in experiments/logs/$1.csv; checkpoint not kept), skipped"
        return 0
    fi
    run "$@"
}

# seed_suffix: checks SEED (default 1), the students' --seed, and sets SFX, the suffix of the
# run and table names of another seed ("" for seed 1, "_seed2" for 2): the spread between
# seeds is the noise a difference between rows has to beat. table3.sh and data_efficiency.sh.
seed_suffix() {
    SEED=${SEED:-1}
    case "$SEED" in *[!0-9]* | "") echo "SEED must be a whole number, not '$SEED'" >&2; exit 2 ;; esac
    SFX=""
    [ "$SEED" != 1 ] && SFX="_seed$SEED"
    return 0
}

# acc NAME COLUMN: the last epoch's value of a log column (5 = averaged heads, 6 = class, 7 = dist)
acc() {
    awk -F, -v c="$2" 'NR > 1 { v = $c } END { print (v == "" ? "-" : v) }' "experiments/logs/$1.csv"
}

# final NAME COLUMN EPOCHS: a row's result for a table: the last epoch's value of a log column once
# the log has all EPOCHS epochs; before that "V (epoch E of EPOCHS, unfinished)", V being the
# last value logged (tested at epoch E); "not run" without a log
final() {
    [ -f "experiments/logs/$1.csv" ] || { echo "not run"; return 0; }
    awk -F, -v c="$2" -v n="$3" 'NR > 1 { if ($1 + 0 > e) e = $1 + 0; if ($c != "") { v = $c; ve = $1 + 0 } }
        END { if (e >= n) print (v == "" ? "-" : v)
              else if (v == "") printf "- (epoch %d of %d, unfinished)\n", e, n
              else printf "%s (epoch %d of %d, unfinished)\n", v, ve, n }' "experiments/logs/$1.csv"
}

# minutes NAME: wall-clock minutes of training in a log (last elapsed_s)
minutes() {
    awk -F, 'NR > 1 { v = $9 } END { printf "%.0f", v / 60 }' "experiments/logs/$1.csv"
}

# in_pairs FUNC ARG...: FUNC ARG for each ARG in turn; with PARALLEL=1 two at a time, one thread
# each (a last odd one alone, still on one thread). The drivers' rows: table3, teachers, aug.
in_pairs() {
    f=$1; shift
    [ "${PARALLEL:-0}" = 1 ] && THREADS=1 THREADS_ARG="--threads 1"
    while [ $# -gt 0 ]; do
        a=$1; shift
        if [ "${PARALLEL:-0}" = 1 ] && [ $# -gt 0 ]; then b=$1; shift; "$f" "$a" & "$f" "$b"; wait; else "$f" "$a"; fi
    done
}
