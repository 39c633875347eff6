#!/usr/bin/env bash
# Runs two cliplabel binaries on the shipped fixtures and diffs every output file byte for byte
# (compare: the numbers of results.json, all of them, nothing rounded). It is the proof that a
# refactor changed no output: `scripts/check_identical.sh OLD_BINARY NEW_BINARY [SCRATCH]`.
#
# Covered: label (csv + jsonl, --top-k, --organize, failures), fit + predict, embed (images,
# --normalize, --features pooled, --text-file), sharded label and embed runs + merge, compare.
# Exit status 0 when every file is identical, 1 otherwise (the differing files are listed).
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 OLD_BINARY NEW_BINARY [SCRATCH_DIR]" >&2
    exit 2
fi
OLD=$(realpath "$1")
NEW=$(realpath "$2")
REPO=$(cd "$(dirname "$0")/.." && pwd)
W=${3:-$(mktemp -d)}
rm -rf "$W/in" "$W/a" "$W/b"
mkdir -p "$W/in" "$W/a" "$W/b"

# Inputs shared by both runs, reached by the same relative path (../in) from each run's folder,
# so that paths written into outputs are the same strings.
IN="$W/in"
cp -r "$REPO/images" "$IN/images"
mkdir -p "$IN/mixed"
cp "$REPO"/tests/fixtures/images/* "$IN/mixed/"
cp "$REPO"/tests/fixtures/bad/{empty.jpg,not_an_image.png,truncated.jpg} "$IN/mixed/"
# An ImageFolder by shape (6 classes) from images/ground_truth.csv: even rows train, odd rows test.
python3 - "$REPO/images/ground_truth.csv" "$IN" <<'PY'
import csv, os, shutil, sys
src, dst = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(src)))
for i, r in enumerate(rows):
    split = "train" if i % 2 == 0 else "test"
    shape = r["label"].split()[-1]
    d = os.path.join(dst, split, shape)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(os.path.dirname(src), r["path"]), d)
PY
printf 'a photo of a red circle\na blue square\nyellow star on black\n' > "$IN/prompts.txt"

SHAPES="$REPO/models/shapes-clip"
TINY="$REPO/tests/fixtures/tiny-clip"

run_all() {
    local bin=$1 dir=$2
    cd "$dir"
    export CLIPLABEL_CACHE="$dir/cache-env"
    {
    "$bin" label -m "$SHAPES" --classes ../in/images/classes.txt --templates shapes --top-k 3 \
        --cache-dir cache -q --out label.csv ../in/images ../in/mixed
    "$bin" label -m "$SHAPES" --classes ../in/images/classes.txt --templates photo --top-k 2 \
        --min-score 0.3 --min-margin 0.05 --no-cache -q --organize organized --mode copy \
        --out label.jsonl ../in/images
    "$bin" label -m "$TINY" --class cat --class dog --class bird --template "a photo of a {}." \
        --template "a {} outside." --no-cache -q --out tiny.csv ../in/mixed
    "$bin" fit -m "$SHAPES" --train ../in/train --cv 2 --cache-dir cache -q --out probe.safetensors
    "$bin" fit -m "$SHAPES" --train ../in/train --cv 2 --init zero-shot --templates shapes \
        --cache-dir cache -q --out zsinit.safetensors
    "$bin" fit -m "$SHAPES" --train ../in/train --cv 2 --interpolate --templates shapes \
        --cache-dir cache -q --out interp.safetensors
    "$bin" fit -m "$SHAPES" --train ../in/train --cv 2 --features pooled --no-cache -q \
        --out pooled.safetensors
    "$bin" predict -m "$SHAPES" --head probe.safetensors --top-k 3 --cache-dir cache -q \
        --out predict.csv ../in/test ../in/mixed
    "$bin" predict -m "$SHAPES" --head interp.safetensors --no-cache -q --out predict.jsonl ../in/test
    "$bin" embed -m "$SHAPES" -q --out emb.safetensors ../in/images ../in/mixed
    "$bin" embed -m "$SHAPES" -q --normalize --features pooled --out emb-pooled.safetensors ../in/images
    "$bin" embed -m "$TINY" -q --normalize --out text.safetensors --text-file ../in/prompts.txt
    for i in 0 1 2; do
        "$bin" label -m "$SHAPES" --classes ../in/images/classes.txt --templates shapes --top-k 2 \
            --batch-size 1 --no-cache -q --shard "$i/3" --out sharded.csv ../in/images ../in/mixed
        "$bin" embed -m "$SHAPES" --batch-size 1 -q --shard "$i/3" --out sharded.safetensors \
            ../in/images ../in/mixed
    done
    "$bin" merge -q sharded.csv --inputs ../in/images ../in/mixed
    "$bin" merge -q sharded.safetensors --inputs ../in/images ../in/mixed
    "$bin" compare -m "$SHAPES" --train ../in/train --test ../in/test --templates photo \
        --templates shapes --shots 1,2,all --seeds 2 --cv 2 --cache-dir cache -q --report report \
        > compare.stdout
    } 2> stderr.txt || { echo "run in $dir failed:" >&2; cat stderr.txt >&2; exit 1; }
    cd - > /dev/null
}

run_all "$OLD" "$W/a"
run_all "$NEW" "$W/b"

status=0
nfiles=0
reordered=0
while IFS= read -r f; do
    nfiles=$((nfiles + 1))
    if [ ! -f "$W/b/$f" ]; then
        echo "only in old: $f"; status=1; continue
    fi
    case "$f" in
    stderr.txt) continue ;; # timings (seconds, images/s) differ between any two runs
    report/results.json)
        if ! python3 - "$W/a/$f" "$W/b/$f" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
def numbers(v, path=""):
    if isinstance(v, dict):
        for k in sorted(v): yield from numbers(v[k], f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v): yield from numbers(x, f"{path}[{i}]")
    else:
        yield path, v
na, nb = list(numbers(a)), list(numbers(b))
diff = [(x, y) for x, y in zip(na, nb) if x != y]
if len(na) != len(nb) or diff:
    print(f"results.json differs: {len(na)} vs {len(nb)} values; first: {diff[:3]}")
    sys.exit(1)
PY
        then status=1; fi
        if ! cmp -s "$W/a/$f" "$W/b/$f"; then echo "note: results.json bytes differ (numbers equal)"; fi
        continue ;;
    esac
    if ! cmp -s "$W/a/$f" "$W/b/$f"; then
        # Before the fix that writes safetensors metadata keys sorted, `embed` wrote its two
        # keys in hash-map order, so its files differed run to run in the header's key order
        # only. Such a file counts as equal when header (as JSON) and tensor bytes are equal.
        if [[ "$f" == *.safetensors ]] && python3 - "$W/a/$f" "$W/b/$f" <<'PY'
import json, struct, sys
def parts(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]
sys.exit(0 if parts(sys.argv[1]) == parts(sys.argv[2]) else 1)
PY
        then
            echo "same tensors and metadata, header key order differs: $f"
            reordered=$((reordered + 1))
        elif [[ "$f" == *.safetensors ]]; then
            python3 - "$W/a/$f" "$W/b/$f" <<'PY'
import json, struct, sys
def parts(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    return json.loads(b[8:8 + n]), b[8 + n:]
(ha, da), (hb, db) = parts(sys.argv[1]), parts(sys.argv[2])
va = struct.unpack(f"<{len(da) // 4}f", da)
vb = struct.unpack(f"<{len(db) // 4}f", db) if len(db) == len(da) else ()
if ha != hb or not vb:
    print(f"DIFFERS: {sys.argv[1].split('/a/', 1)[1]} (header or size)")
else:
    d = [abs(x - y) for x, y in zip(va, vb) if x != y]
    print(f"DIFFERS: {sys.argv[1].split('/a/', 1)[1]} (same header; {len(d)} of {len(va)} "
          f"values differ, max |diff| {max(d):.3g})")
PY
            status=1
        else
            echo "DIFFERS: $f"; status=1
        fi
    fi
done < <(cd "$W/a" && find . -type f | sed 's|^\./||' | sort)
while IFS= read -r f; do
    [ -f "$W/a/$f" ] || { echo "only in new: $f"; status=1; }
done < <(cd "$W/b" && find . -type f | sed 's|^\./||' | sort)

if [ $status -eq 0 ]; then
    echo "identical: $nfiles files ($reordered of them only up to safetensors header key order; old $OLD, new $NEW; scratch $W)"
else
    echo "NOT identical (scratch $W)"
fi
exit $status
