#!/bin/sh
# dev/test_download.sh - offline tests for cifar_download.sh (no network needed).
# Usage: sh dev/test_download.sh   (exits non-zero if any check fails)
set -u
REPO=$(cd "$(dirname "$0")/.." && pwd)
SCRIPT="$REPO/cifar_download.sh"
T=$(mktemp -d)
trap 'chmod -R u+w "$T" 2>/dev/null; rm -rf "$T"' EXIT INT TERM
FAILS=0

# check NAME WANT_RC PATTERN CMD...: run CMD, require its exit code (or "nonzero") and PATTERN in its output
check() {
    name=$1 want=$2 pat=$3; shift 3
    "$@" > "$T/out" 2>&1; rc=$?
    if { [ "$want" = nonzero ] && [ "$rc" -ne 0 ] || [ "$rc" = "$want" ]; } && grep -q -- "$pat" "$T/out"; then
        echo "PASS: $name"
    else
        echo "FAIL: $name (rc=$rc, wanted $want and output matching '$pat'):"; sed 's/^/    /' "$T/out"
        FAILS=$((FAILS + 1))
    fi
}

# 1. a directory of tiny fake files is rejected with a size error naming the file
mkdir -p "$T/fake"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
    printf 'tiny' > "$T/fake/$f.bin"
done
check "--from fake dir fails with size error" nonzero "data_batch_1.bin: size 4 bytes, expected 30730000" \
    "$SCRIPT" --from "$T/fake" --data-dir "$T/d_fake"

# 2. a tarball with the wrong MD5 is rejected
tar -czf "$T/cifar-10-binary.tar.gz" -C "$T" fake
check "--from tarball with wrong MD5 fails" nonzero "MD5 mismatch" \
    "$SCRIPT" --from "$T/cifar-10-binary.tar.gz" --data-dir "$T/d_tar"
[ ! -e "$T/d_tar/fake" ] || { echo "FAIL: bad tarball was extracted anyway"; FAILS=$((FAILS + 1)); }

# 3. bad flags / missing flag values exit 2; --help exits 0
check "unknown flag exits 2" 2 "unknown argument" "$SCRIPT" --bogus
check "--from without PATH exits 2" 2 "needs a PATH" "$SCRIPT" --from
check "--help exits 0" 0 "usage:" "$SCRIPT" --help
check "--from missing path fails" nonzero "no such file or directory" \
    "$SCRIPT" --from "$T/nope" --data-dir "$T/d_nope"

# 4. the real extracted directory is accepted and copied; a second run is idempotent
REAL=""
for d in "$REPO/../shared/data/cifar-10-batches-bin" /work/shared/data/cifar-10-batches-bin; do
    [ -f "$d/test_batch.bin" ] && { REAL=$d; break; }
done
if [ -z "$REAL" ]; then
    echo "SKIP: real CIFAR-10 directory not found (../shared/data/cifar-10-batches-bin)"
else
    check "--from real dir succeeds" 0 "ok: cifar10 ready" "$SCRIPT" --from "$REAL" --data-dir "$T/d"
    n=0
    for f in "$T"/d/cifar-10-batches-bin/*_batch*.bin; do
        [ "$(wc -c < "$f" | tr -d ' ')" = 30730000 ] && n=$((n + 1))
    done
    if [ "$n" = 6 ]; then echo "PASS: 6 files of 30730000 bytes copied"
    else echo "FAIL: expected 6 files of 30730000 bytes, found $n"; FAILS=$((FAILS + 1)); fi
    check "second run is idempotent (no download)" 0 "already present" "$SCRIPT" --data-dir "$T/d"
    check "cifar100 on a CIFAR-10 dir fails" nonzero "train.bin: missing" \
        "$SCRIPT" cifar100 --from "$REAL" --data-dir "$T/d"
fi

if [ "$FAILS" -eq 0 ]; then echo "ALL PASS"; else echo "$FAILS check(s) FAILED"; fi
[ "$FAILS" -eq 0 ]
