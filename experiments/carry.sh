#!/bin/sh
# Carry an unfinished run to another machine through git.
#
#   experiments/carry.sh NAME...      copy experiments/runs/NAME.bin and NAME.bin.state into
#                                     experiments/carry/ (tracked), to be committed
#   experiments/carry.sh --drop NAME  delete NAME's carried copy (once the run has finished)
#   experiments/carry.sh --unfinished every run in experiments/runs/ whose .state has epochs left
#                                     (header [3] epochs done < [13] epochs asked for)
#   experiments/carry.sh --stop       first stop the drivers and their runs (SIGTERM: each run
#                                     saves its checkpoint and state), then --unfinished
#
# Runs write their checkpoints to experiments/runs/, which git ignores; a run on a fresh
# machine starts without them. lib.sh's run() looks in experiments/carry/ when runs/ has no
# state for a row and resumes from the carried copy, so a row that did not finish on one
# machine continues on the next with the same command. Sizes: a ResNet-20 checkpoint and state
# are about 2 MB, a quick student 14 MB, DeiT-Ti 64 MB (every commit of one stays in git's
# history). The logs travel in experiments/logs/ as usual.
set -eu
cd "$(dirname "$0")/.."
mkdir -p experiments/carry
if [ "${1:-}" = --drop ]; then
    shift
    for name in "$@"; do rm -f "experiments/carry/$name.bin" "experiments/carry/$name.bin.state"; done
    exit 0
fi
if [ "${1:-}" = --stop ]; then
    # the drivers first (a driver whose run exits goes on to its next run), then the runs
    for pid in $(pgrep -f "sh experiments/[a-z0-9_]*\.sh"); do
        [ "$pid" = $$ ] || [ "$pid" = "$PPID" ] || kill -KILL "$pid" 2> /dev/null || true
    done
    pkill -TERM -f "^\./deit (train|teacher) " || true
    while pgrep -f "^\./deit (train|teacher) " > /dev/null; do sleep 1; done
    set -- --unfinished
fi
if [ "${1:-}" = --unfinished ]; then
    # int32 number I of a .state header (the header is little-endian int32s, deit.c Part III)
    field() { od -An -t d4 -j $(($2 * 4)) -N 4 "$1" | tr -d ' '; }
    set --
    for state in experiments/runs/*.bin.state; do
        [ -f "$state" ] || continue
        done_=$(field "$state" 3) total=$(field "$state" 13)
        if [ "$done_" -lt "$total" ]; then set -- "$@" "$(basename "$state" .bin.state)"; fi
    done
    [ $# -gt 0 ] || { echo "carry: no unfinished run in experiments/runs/"; exit 0; }
fi
[ $# -gt 0 ] || { echo "usage: experiments/carry.sh NAME... | --unfinished | --stop | --drop NAME..." >&2; exit 2; }
for name in "$@"; do
    bin=experiments/runs/$name.bin
    [ -f "$bin" ] && [ -f "$bin.state" ] || { echo "carry: no $bin and $bin.state" >&2; exit 1; }
    cp "$bin" "experiments/carry/$name.bin.tmp" && mv "experiments/carry/$name.bin.tmp" "experiments/carry/$name.bin"
    cp "$bin.state" "experiments/carry/$name.bin.state.tmp" && mv "experiments/carry/$name.bin.state.tmp" "experiments/carry/$name.bin.state"
    echo "carry: $name ($(du -k "$bin" "$bin.state" | awk '{ s += $1 } END { print s }') KB) in experiments/carry/"
done
