#!/bin/sh
# cifar_download.sh - fetch the CIFAR-10 / CIFAR-100 binary versions for deit.c
# Run ./cifar_download.sh --help for usage. Local data is copied (cp, never symlinked).
set -eu

usage() {
    cat <<'EOF'
usage: ./cifar_download.sh [cifar10|10|cifar100|100] [--from PATH] [--data-dir DIR]

Downloads the CIFAR binary tarball from https://www.cs.toronto.edu/~kriz/,
checks its MD5, extracts it into DIR (default: data/ next to this script) and
checks the file sizes. CIFAR-10 ends up in DIR/cifar-10-batches-bin/,
CIFAR-100 in DIR/cifar-100-binary/. Does nothing if the data is already there.

  --from PATH     no network: use a local tarball (MD5 checked) or an
                  already-extracted directory (sizes checked, SHA256SUMS
                  verified if present); its files are copied into DIR
  --data-dir DIR  destination directory (default: <script dir>/data)
  -h, --help      show this help
EOF
}

die() { echo "error: $*" >&2; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
DATASET=cifar10 FROM="" DATA_DIR="$SCRIPT_DIR/data"
while [ $# -gt 0 ]; do
    case "$1" in
        cifar10|10) DATASET=cifar10 ;;
        cifar100|100) DATASET=cifar100 ;;
        --from) [ $# -ge 2 ] || { echo "error: --from needs a PATH" >&2; exit 2; }; FROM=$2; shift ;;
        --data-dir) [ $# -ge 2 ] || { echo "error: --data-dir needs a DIR" >&2; exit 2; }; DATA_DIR=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ "$DATASET" = cifar10 ]; then
    TARBALL=cifar-10-binary.tar.gz MD5=c32a1d4ab5d03f1284b67883e8d87530
    SUBDIR=cifar-10-batches-bin
    FILES="data_batch_1.bin:30730000 data_batch_2.bin:30730000 data_batch_3.bin:30730000
           data_batch_4.bin:30730000 data_batch_5.bin:30730000 test_batch.bin:30730000"
    META="batches.meta.txt SHA256SUMS"
else
    TARBALL=cifar-100-binary.tar.gz MD5=03b5dce01913d631647c71ecec9e9cb8
    SUBDIR=cifar-100-binary
    FILES="train.bin:153700000 test.bin:30740000"
    META="coarse_label_names.txt fine_label_names.txt SHA256SUMS"
fi
URL="https://www.cs.toronto.edu/~kriz/$TARBALL"
DEST="$DATA_DIR/$SUBDIR"

# check_sizes DIR: print a problem per bad file on stderr; non-zero if any
check_sizes() {
    bad=0
    for spec in $FILES; do
        f=${spec%%:*} want=${spec#*:}
        if [ ! -f "$1/$f" ]; then
            echo "error: $1/$f: missing" >&2; bad=1
        else
            got=$(wc -c < "$1/$f" | tr -d ' ')
            [ "$got" = "$want" ] || { echo "error: $1/$f: size $got bytes, expected $want" >&2; bad=1; }
        fi
    done
    return $bad
}

md5_of() {
    if command -v md5sum >/dev/null 2>&1; then md5sum < "$1" | cut -d' ' -f1
    elif command -v md5 >/dev/null 2>&1; then md5 -q "$1"
    else die "neither md5sum nor md5 found; cannot verify $1"; fi
}

# extract_tarball FILE: check MD5, unpack into DATA_DIR, check sizes
extract_tarball() {
    echo "verifying MD5 of $1"
    got=$(md5_of "$1")
    [ "$got" = "$MD5" ] || die "$1: MD5 mismatch (got $got, expected $MD5 for $TARBALL); corrupt or wrong file"
    echo "extracting $1 into $DATA_DIR/"
    tar -xzf "$1" -C "$DATA_DIR" || die "$1: extraction failed"
    check_sizes "$DEST" || die "$DEST: extracted files have the wrong sizes (see above)"
}

if [ -d "$DEST" ] && check_sizes "$DEST" 2>/dev/null; then
    echo "$DATASET already present in $DEST (all file sizes correct); nothing to do"
    exit 0
fi
mkdir -p "$DATA_DIR" || die "$DATA_DIR: cannot create directory"

if [ -n "$FROM" ] && [ -d "$FROM" ]; then
    echo "using local directory $FROM"
    check_sizes "$FROM" || die "$FROM: does not contain a valid $DATASET binary set (see above)"
    if [ -f "$FROM/SHA256SUMS" ]; then
        if command -v sha256sum >/dev/null 2>&1; then SHA="sha256sum -c -"; else SHA="shasum -a 256 -c -"; fi
        (cd "$FROM" && while read -r sum f; do f=${f#\*}; [ -f "$f" ] && echo "$sum  $f"; done < SHA256SUMS | $SHA) \
            || die "$FROM/SHA256SUMS: checksum verification failed"
        echo "SHA256SUMS verified"
    fi
    mkdir -p "$DEST"
    for spec in $FILES; do
        f=${spec%%:*}
        if ! { cp "$FROM/$f" "$DEST/$f.tmp" && chmod u+w "$DEST/$f.tmp" && mv -f "$DEST/$f.tmp" "$DEST/$f"; }; then
            die "$DEST/$f: copy from $FROM failed"
        fi
    done
    for f in $META; do
        if [ -f "$FROM/$f" ]; then
            { rm -f "$DEST/$f" && cp "$FROM/$f" "$DEST/$f" && chmod u+w "$DEST/$f"; } || die "$DEST/$f: copy failed"
        fi
    done
    check_sizes "$DEST" || die "$DEST: copied files have the wrong sizes (see above)"
elif [ -n "$FROM" ]; then
    [ -f "$FROM" ] || die "$FROM: no such file or directory"
    extract_tarball "$FROM"
else
    out="$DATA_DIR/$TARBALL"
    echo "downloading $URL"
    if command -v curl >/dev/null 2>&1; then
        curl -fL# --connect-timeout 20 -o "$out.part" "$URL" || fail=1
    elif command -v wget >/dev/null 2>&1; then
        wget -T 20 -O "$out.part" "$URL" || fail=1
    else
        die "neither curl nor wget found; download $URL yourself and use --from"
    fi
    if [ "${fail:-0}" = 1 ]; then
        rm -f "$out.part"
        die "could not download $URL: network unreachable (or site down).
       Get $TARBALL elsewhere and run: $0 $DATASET --from /path/to/$TARBALL"
    fi
    mv "$out.part" "$out"
    extract_tarball "$out"
    rm -f "$out"
fi
echo "ok: $DATASET ready in $DEST"
