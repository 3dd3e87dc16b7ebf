#!/usr/bin/env bash
# make check-torch: deit.c against an independent PyTorch reference, and the checkpoint converter.
#   0. dev/convert.py selftest: the converter on synthetic files (airbench and ResNet teachers,
#      header versions 1 and 2, files it must refuse); needs neither deit.c nor the data;
#   1. dev/reference.py: logits, loss and every parameter gradient of one batch (./deit
#      debug-state) for a distilled student, a plain ViT and a ResNet, with distillation none /
#      soft / hard, a ResNet or a student as the teacher, on small checkpoints trained for 2 steps
#      and on randomised copies of them; plus a random DeiT-Tiny at 224 / patch 16 / 1000 classes;
#   2. dev/convert.py: deit.c -> .pt -> deit.c byte for byte (student with and without the
#      distillation token, teacher), also from a plain state_dict (configuration inferred);
#   3. dev/eval_torch.py: the converted models classify the CIFAR-10 test set in PyTorch with
#      exactly as many correct answers as `./deit eval`, logits within 1e-4 of the largest
#      (`./deit eval --tta 0` where deit.c has test-time augmentation).
# When deit.c has the airbench teacher (`./deit teacher --help` names it), a tiny one (2 steps on
# 2048 images) gets steps 2 and 3 as well; until then that is skipped with a message.
# Extra checkpoints given as arguments (e.g. a trained teacher) get steps 2 and 3 too.
# Skipped (exit 0) when torch cannot be imported; only step 0 runs when the CIFAR-10 data is not there.
set -u
cd "$(dirname "$0")/.."

PY=""
for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import torch, numpy" >/dev/null 2>&1; then PY=$p; break; fi
done
if [ -z "$PY" ]; then echo "check-torch: torch not importable, skipped"; exit 0; fi
export OMP_NUM_THREADS=1

TMP=$(mktemp -d "${TMPDIR:-/tmp}/deit_check_torch.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
ok() { echo "check-torch: ok   $*"; passed=$((passed + 1)); }
bad() { echo "check-torch: FAIL $*"; failed=$((failed + 1)); }
run() { # run a command quietly, show its output if it fails
    if ! "$@" >"$TMP/out.txt" 2>&1; then cat "$TMP/out.txt"; return 1; fi
}
t0=$(date +%s)

# 0. the converter on its own
if run "$PY" dev/convert.py selftest; then ok "convert.py selftest: $(tail -n 1 "$TMP/out.txt" | sed 's/^selftest: //')"
else bad "convert.py selftest (see above)"; fi

DATA=${DEIT_DATA:-data/cifar-10-batches-bin}
if [ ! -f "$DATA/test_batch.bin" ] || [ ! -f "$DATA/data_batch_1.bin" ]; then
    echo "check-torch: no CIFAR-10 binary data in $DATA (./cifar_download.sh), the rest skipped"
    echo "check-torch: $passed passed, $failed failed"
    [ "$failed" = 0 ]; exit
fi
[ -x ./deit ] || make deit >/dev/null || { echo "check-torch: cannot build ./deit"; exit 1; }

tiny="--dim 32 --depth 2 --heads 2 --epochs 1 --steps 2 --batch 8 --threads 1 --data $DATA"
run ./deit train $tiny --dist-token 1 --out "$TMP/student.bin" &&
    run ./deit train $tiny --dist-token 0 --out "$TMP/vit.bin" &&
    run ./deit teacher --arch resnet8 --epochs 1 --steps 2 --batch 8 --threads 1 --data $DATA --out "$TMP/resnet8.bin" ||
    { echo "check-torch: FAIL could not train the small checkpoints"; exit 1; }
airbench=()
if ./deit teacher --help 2>&1 | grep -qi airbench; then  # 2 steps of the recipe's batch (1024)
    if run ./deit teacher --arch airbench --steps 2 --train-limit 2048 --threads 1 --data $DATA --out "$TMP/airbench.bin"
    then airbench=("$TMP/airbench.bin"); else bad "could not train a tiny airbench teacher"; fi
else
    echo "check-torch: airbench skipped: ./deit teacher --help does not name it (deit.c has no airbench yet)"
fi
tta=""  # deit.c's eval without test-time augmentation, as eval_torch.py's default
./deit eval --help 2>&1 | grep -q -- "--tta" && tta="--tta 0"

# 1. the reference
if "$PY" dev/reference.py --student "$TMP/student.bin" --vit "$TMP/vit.bin" --resnet "$TMP/resnet8.bin" \
    --tiny224 --workdir "$TMP/ref"; then ok "reference: logits, loss, gradients"; else bad "reference (see above)"; fi

# 2 and 3 for each checkpoint
models=("$TMP/student.bin" "$TMP/vit.bin" "$TMP/resnet8.bin" ${airbench[@]+"${airbench[@]}"} "$@")
for m in "${models[@]}"; do
    name=$(basename "$m" .bin)
    pt="$TMP/$name.pt" back="$TMP/$name.back.bin"
    if run "$PY" dev/convert.py to-torch "$m" "$pt" && run "$PY" dev/convert.py from-torch "$pt" "$back" &&
        cmp -s "$m" "$back"; then ok "$name: deit.c -> .pt -> deit.c is byte for byte identical"
    else bad "$name: round trip"; fi
    # a plain state_dict, no deit_config: the configuration is inferred (heads from the .pt's config)
    heads=$("$PY" -c "import torch,sys; c=torch.load(sys.argv[1])['deit_config']; print(c.get('heads', 0))" "$pt")
    "$PY" -c "import torch,sys; torch.save(torch.load(sys.argv[1])['model'], sys.argv[2])" "$pt" "$TMP/$name.plain.pt"
    hflag=""; [ "$heads" != 0 ] && hflag="--heads $heads"
    if run "$PY" dev/convert.py from-torch "$TMP/$name.plain.pt" "$TMP/$name.inferred.bin" $hflag &&
        cmp -s "$m" "$TMP/$name.inferred.bin"; then ok "$name: plain state_dict -> deit.c (config inferred) identical"
    else bad "$name: from a plain state_dict"; fi

    acc_c=$(./deit eval --ckpt "$m" $tta --threads 1 --data "$DATA" --logits "$TMP/$name.logits" | sed -n 's/^accuracy: \([0-9.]*\)%.*/\1/p')
    "$PY" dev/eval_torch.py "$pt" --data "$DATA" --deit-logits "$TMP/$name.logits" --tol 1e-4 >"$TMP/eval.txt" 2>&1
    acc_t=$(sed -n 's/^torch: [0-9]* correct of [0-9]* (\([0-9.]*\)%).*/\1/p' "$TMP/eval.txt")
    sed 's/^/    /' "$TMP/eval.txt"
    if [ -n "$acc_c" ] && [ "$acc_c" = "$acc_t" ] && grep -q "correct counts equal" "$TMP/eval.txt" &&
        grep -q "logits within tolerance" "$TMP/eval.txt"; then
        ok "$name: test accuracy ./deit eval $acc_c% = PyTorch $acc_t%, logits within 1e-4"
    else bad "$name: test accuracy ./deit eval '${acc_c}%' vs PyTorch '${acc_t}%'"; fi
done

echo "check-torch: $(($(date +%s) - t0)) s"
echo "check-torch: $passed passed, $failed failed"
[ "$failed" = 0 ]
