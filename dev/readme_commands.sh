#!/bin/sh
# Every command of the ```sh blocks in README.md and experiments/README.md, from a fresh clone.
#
#   sh dev/readme_commands.sh [DIR]   clones HEAD into DIR (default: a new directory in /tmp), sets
#                                     the data up with the README's first command, then goes through
#                                     the commands in order and says what it did with each:
#     ran              a short command, run as written; the numbers it prints that the README
#                      quotes are compared with the README (see `expect` below)
#     started+resumed  a training of minutes to hours: run as written but stopped after 2
#                      optimizer steps, then run again, which must resume it and stop at step 4
#                      (a driver under experiments/ gets STEPS=2, then STEPS=4: lib.sh passes
#                      --steps; a ./deit teacher/train gets --steps 2, then --resume OUT --steps 4)
#   sh dev/readme_commands.sh --quick  in this checkout, only the fast ones (make test runs it):
#                                     the evaluations of the committed checkpoints
#   ONLY=REGEX  only the commands that match (grep -E), e.g. after fixing what a full run failed on
#   DATA=PATH  the CIFAR-10 directory or tarball for ./cifar_download.sh --from (no network here;
#              default ../shared/data/cifar-10-batches-bin beside the repository)
# Exits 1 if any command fails or prints a number other than the README's.
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
DATA=${DATA:-$REPO/../shared/data/cifar-10-batches-bin}
failed=0
ok() { printf '%-16s %s\n' "$1" "$2"; }
bad() { printf '%-16s %s\n' "FAILED" "$1"; [ -n "${2:-}" ] && printf '                 %s\n' "$2"; failed=1; }

# expect COMMAND TEXT: COMMAND's output must contain TEXT, and README.md or experiments/README.md
# must quote TEXT's number (the last word of TEXT, without its %).
expect() {
    out=$(sh -c "$1" 2>&1)
    rc=$?
    num=$(printf '%s' "$2" | awk '{ print $NF }' | tr -d '%,')
    if [ $rc -ne 0 ]; then bad "$1" "exit status $rc: $(printf '%s' "$out" | tail -1)"
    elif ! printf '%s' "$out" | grep -qF -- "$2"; then bad "$1" "expected '$2', got: $(printf '%s' "$out" | grep -m1 accuracy)"
    elif ! grep -qF -- "$num" README.md experiments/README.md; then bad "$1" "the READMEs do not quote $num"
    else ok ran "$1   -> $2"; fi
}

# The fast subset: committed checkpoints against the accuracies the READMEs give.
quick() {
    [ -f data/cifar-10-batches-bin/test_batch.bin ] || { echo "readme commands: skipped (no data/cifar-10-batches-bin: run ./cifar_download.sh)"; return 0; }
    [ -x ./deit ] || make -s deit
    expect "./deit eval experiments/checkpoints/teacher_airbench_seed1.bin" "accuracy: 89.94%"
    expect "./deit eval experiments/checkpoints/teacher_resnet20.bin" "accuracy: 86.91%"
    expect "./deit eval experiments/checkpoints/demo_none.bin" "accuracy: 33.84%"
    expect "./deit eval experiments/checkpoints/demo_dist.bin" "accuracy: 34.89%"
    expect "./deit eval experiments/checkpoints/overnight_quick_none.bin" "accuracy: 57.96%"
    expect "./deit eval experiments/checkpoints/overnight_quick_dist.bin" "accuracy: 64.86%"
    expect "./deit eval experiments/checkpoints/overnight_quick_none_seed2.bin" "accuracy: 58.65%"
    expect "./deit eval experiments/checkpoints/overnight_quick_dist_seed2.bin" "accuracy: 64.36%"
    expect "./deit eval experiments/checkpoints/overnight_dist.bin" "accuracy: 73.71%"
    expect "./deit eval experiments/checkpoints/overnight_none.bin" "accuracy: 66.10%"
}

if [ "${1:-}" = --quick ]; then
    quick
    [ $failed -eq 0 ] && echo "readme commands (quick): ok" || echo "readme commands (quick): FAILED"
    exit $failed
fi

DIR=${1:-$(mktemp -d /tmp/deit_readme.XXXXXX)}
if [ -d "$DIR/.git" ]; then # a clone of an earlier run (its runs/ kept), brought to HEAD
    git -C "$DIR" fetch -q "$REPO" HEAD && git -C "$DIR" reset -q --hard FETCH_HEAD || exit 1
else git clone -q "$REPO" "$DIR" || exit 1; fi
cd "$DIR" || exit 1
echo "readme commands: a clone of $(git rev-parse --short HEAD) in $DIR"

# The commands, one per line (continuation lines joined, comments dropped), in README order.
commands() {
    for f in README.md experiments/README.md; do
        awk '/^```sh/ { inblock = 1; next } /^```/ { inblock = 0; next }
             inblock { line = line $0; if (line ~ /\\$/) { sub(/\\$/, " ", line); next }
                       sub(/[ \t]+#.*$/, "", line); gsub(/[ \t]+/, " ", line)
                       if (line !~ /^ *#/ && line !~ /^ *$/) print line; line = "" }' "$f"
    done
}

# resume_of COMMAND: a ./deit teacher/train command as --resume OUT --steps 4
resume_of() {
    printf '%s\n' "$1" | awk '{ for (i = 1; i <= NF; i++) if ($i == "--out") out = $(i + 1)
        cmd = ($0 ~ /deit teacher/) ? "teacher" : "train"
        printf "./deit %s --resume %s --steps 4", cmd, out }'
}

# start_resume COMMAND: each ./deit teacher/train of COMMAND (A && B ...), in order, stopped after
# 2 steps and resumed to step 4 before the next one starts (B then trains from A's file as it
# will stay: a student's state records its teacher's weights). Prints what failed.
start_resume() {
    printf '%s\n' "$1" | sed 's/ *&& */\n/g' > /tmp/readme_chain.$$
    status=0
    while IFS= read -r part; do
        short=$(printf '%s' "$part" | sed 's#\./deit \(teacher\|train\)#./deit \1 --steps 2#')
        again=$(resume_of "$part")
        if ! sh -c "$short" > /dev/null 2>&1 < /dev/null; then echo "$short"; status=1; break; fi
        if ! out=$(sh -c "$again" 2>&1 < /dev/null) || ! printf '%s\n' "$out" | grep -q "resuming"; then
            echo "$again: $(printf '%s\n' "$out" | tail -1)"; status=1; break
        fi
    done < /tmp/readme_chain.$$
    rm -f /tmp/readme_chain.$$
    return $status
}

commands | grep -E -- "${ONLY:-.}" > /tmp/readme_commands.$$
while IFS= read -r cmd; do
    case "$cmd" in
    *cifar_download.sh*)
        if ./cifar_download.sh --from "$DATA" > /dev/null 2>&1 && make -s deit > /dev/null 2>&1; then
            ok ran "$cmd   (with --from $DATA: no network here)"
        else bad "$cmd"; fi ;;
    *"./deit demo"*)
        out=$(sh -c "$cmd" 2>&1 < /dev/null)
        if [ $? -eq 0 ] && printf '%s\n' "$out" | grep -q "the distillation token's gain"; then
            line=$(printf '%s\n' "$out" | grep "DeiT, class + distillation token:")
            num=$(printf '%s' "$line" | awk '{ print $6 }')
            if grep -qF -- "$num" "$REPO/README.md"; then ok ran "$cmd   -> $line"
            else bad "$cmd" "printed '$line'; the README does not quote $num"; fi
        else bad "$cmd" "$(printf '%s\n' "$out" | tail -2)"; fi ;;
    *"./deit eval"* | *"./deit tokens"* | *"./deit compare"* | *"./deit attention"*)
        if sh -c "$cmd" > /dev/null 2>&1 < /dev/null; then ok ran "$cmd"; else bad "$cmd"; fi ;;
    *experiments/inside.sh*) # analyses of checkpoints: nothing to start or resume
        if out=$(sh -c "$cmd" 2>&1 < /dev/null); then ok ran "$cmd"; else bad "$cmd" "$(printf '%s\n' "$out" | tail -1)"; fi ;;
    *experiments/*.sh*)
        a=$(STEPS=2 sh -c "$cmd" 2>&1 < /dev/null); ra=$?
        b=$(STEPS=4 sh -c "$cmd" 2>&1 < /dev/null); rb=$?
        if [ $ra -eq 0 ] && [ $rb -eq 0 ] && printf '%s\n' "$b" | grep -q "resuming\|skipped\|committed checkpoint"; then
            ok started+resumed "$cmd"
        else bad "$cmd" "exit status $ra then $rb: $(printf '%s\n' "$a" "$b" | tail -1)"; fi ;;
    *"./deit teacher"* | *"./deit train"*)
        if why=$(start_resume "$cmd"); then ok started+resumed "$cmd"; else bad "$cmd" "$why"; fi ;;
    *) if sh -c "$cmd" > /dev/null 2>&1 < /dev/null; then ok ran "$cmd"; else bad "$cmd"; fi ;;
    esac
done < /tmp/readme_commands.$$
rm -f /tmp/readme_commands.$$
quick
[ $failed -eq 0 ] && echo "readme commands: ok" || echo "readme commands: FAILED"
exit $failed
