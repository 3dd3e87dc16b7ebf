#!/bin/sh
# Carry an unfinished run to another machine through git.
#
#   experiments/carry.sh NAME...      copy experiments/runs/NAME.bin and NAME.bin.state into
#                                     experiments/carry/ (tracked), to be committed
#   experiments/carry.sh --drop NAME  delete NAME's carried copy (once the run has finished)
#
# Runs write their checkpoints to experiments/runs/, which git ignores; a run on a fresh
# machine starts without them. lib.sh's run() looks in experiments/carry/ when runs/ has no
# state for a row and resumes from the carried copy, so a row that did not finish on one
# machine continues on the next with the same command. Only carry small runs (a ResNet-20
# checkpoint and state are about 2 MB); the logs travel in experiments/logs/ as usual.
set -eu
cd "$(dirname "$0")/.."
mkdir -p experiments/carry
if [ "${1:-}" = --drop ]; then
    shift
    for name in "$@"; do rm -f "experiments/carry/$name.bin" "experiments/carry/$name.bin.state"; done
    exit 0
fi
[ $# -gt 0 ] || { echo "usage: experiments/carry.sh NAME... | --drop NAME..." >&2; exit 2; }
for name in "$@"; do
    bin=experiments/runs/$name.bin
    [ -f "$bin" ] && [ -f "$bin.state" ] || { echo "carry: no $bin and $bin.state" >&2; exit 1; }
    cp "$bin" "experiments/carry/$name.bin.tmp" && mv "experiments/carry/$name.bin.tmp" "experiments/carry/$name.bin"
    cp "$bin.state" "experiments/carry/$name.bin.state.tmp" && mv "experiments/carry/$name.bin.state.tmp" "experiments/carry/$name.bin.state"
    echo "carry: $name ($(du -k "$bin" "$bin.state" | awk '{ s += $1 } END { print s }') KB) in experiments/carry/"
done
