#!/bin/sh
# Replays the README's gdb walkthrough (the block after the line "<!-- gdb-walkthrough -->")
# with gdb -batch and checks that gdb prints what the README shows: every printed value, every
# "at deit.c:LINE" and source line, in the same order. Addresses (0x...) are not compared.
#   sh dev/gdb_walkthrough.sh          (make test runs it)
# Exit 0: replayed and equal, or skipped (no gdb, no data: it says which); 1: a difference.
set -u
cd "$(dirname "$0")/.." || exit 1
data=${DEIT_DATA:-data/cifar-10-batches-bin}
if ! command -v gdb >/dev/null 2>&1; then
    echo "gdb walkthrough: skipped (gdb is not installed; apt-get install gdb)"; exit 0
fi
if [ ! -f "$data/data_batch_1.bin" ]; then
    echo "gdb walkthrough: skipped (no CIFAR-10 in $data: ./cifar_download.sh)"; exit 0
fi
[ -x ./deit_debug ] || make -s deit_debug || exit 1
t=$(mktemp -d) || exit 1
trap 'rm -rf "$t"' EXIT

# The block: the gdb command line ("$ gdb ... \" and its continuation), the (gdb) commands
# (a "# ..." comment after a command is the README's, not gdb's), and the expected output
# (every other line but "$ " lines and "..." lines, which stand for output left out).
awk -v dir="$t" '
    /^<!-- gdb-walkthrough -->/ { armed = 1; next }
    armed && /^```/ { if (inside) exit; inside = 1; next }
    !inside { next }
    cont { line = $0; sub(/\\$/, "", line); args = args " " line; cont = /\\$/; next }
    /^\$ gdb / { line = $0; sub(/^\$ gdb /, "", line); sub(/\\$/, "", line); args = line; cont = /\\$/; next }
    /^\$ / || /^\.\.\.$/ { next }
    /^\(gdb\) / { cmd = substr($0, 7); sub(/[ \t]+#.*$/, "", cmd); print cmd > (dir "/cmds"); next }
    { print > (dir "/expected") }
    END { print args > (dir "/args") }
' README.md
if [ ! -s "$t/cmds" ] || [ ! -s "$t/expected" ] || [ ! -s "$t/args" ]; then
    echo "gdb walkthrough: FAIL: README.md has no walkthrough block after <!-- gdb-walkthrough -->"; exit 1
fi
args=$(cat "$t/args")
case "$args" in *--args\ ./deit_debug\ *) ;; *) echo "gdb walkthrough: FAIL: the README's gdb line must run ./deit_debug"; exit 1 ;; esac
# shellcheck disable=SC2086 # the README's arguments, split as the shell would split them
DEIT_DATA="$data" gdb -batch -nx -x "$t/cmds" $args >"$t/actual" 2>&1 </dev/null

# Addresses differ from run to run; gdb's thread and "Kill the program" chatter is left out.
norm() { sed -e 's/0x[0-9a-f]*/0x_/g' -e 's/[[:space:]]*$//' "$1" | grep -v -e '^\[' -e '^Using host libthread_db' -e '^Kill the program'; }
norm "$t/expected" >"$t/e"
norm "$t/actual" >"$t/a"
# Every expected line must appear in the actual output, in order (output may have more lines).
awk 'NR == FNR { want[++n] = $0; next }
     k < n && $0 == want[k + 1] { k++ }
     END { if (k < n) { printf "missing or different: %s\n", want[k + 1]; exit 1 } }' "$t/e" "$t/a" >"$t/diff"
if [ $? -ne 0 ]; then
    echo "gdb walkthrough: FAIL: gdb's output differs from the README's walkthrough:"
    cat "$t/diff"
    echo "---- gdb printed:"; cat "$t/actual"
    exit 1
fi
echo "gdb walkthrough: ok, $(wc -l <"$t/cmds") commands replayed, $(wc -l <"$t/e") lines as in README.md"
