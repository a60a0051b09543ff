#!/usr/bin/env bash
# The CUDA checks and timings of issue 6 in one go, sized for one call of a lent GPU machine
# (about 6 minutes on an H100): the CUDA/graph tests, benchmarks/speed.py and
# benchmarks/search_speed.py, and a short accuracy run that times fit. Results land in
# $OUT (or ./gpu-results): one log and one JSON file per step.
#
#   bash benchmarks/gpu_check.sh --prepare   # here, once: MNIST (gzipped) into .gpu/, ignored
#   bash benchmarks/gpu_check.sh             # there: uses .gpu/ and the machine's own torch
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh   # a dry run of the script on the CPU
#
# The GPU machine has torch, typer, rich, jinja2, scikit-learn, matplotlib, pluggy and pytest
# but cannot install anything; aetool runs from the source tree (PYTHONPATH), and none of
# these steps needs optuna. A failing step is logged and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    raw="${AETOOL_DATA:-$HOME/.cache/aetool/data}/MNIST/raw"
    mkdir -p .gpu
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte \
             t10k-labels-idx1-ubyte; do
        gzip -c "$raw/$f" > ".gpu/$f.gz" || { echo "missing $raw/$f: run aetool fit once"; exit 1; }
    done
    du -sh .gpu
    exit 0
fi

out="${OUT:-gpu-results}"
mkdir -p "$out" /tmp/aetool-data/MNIST/raw
for f in .gpu/*.gz; do gunzip -c "$f" > "/tmp/aetool-data/MNIST/raw/$(basename "$f" .gz)"; done
export AETOOL_DATA=/tmp/aetool-data PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 AETOOL_NO_ENTRYPOINTS=1
py="${PYTHON:-python3}"
device="${GPU_CHECK_DEVICE:-cuda}"
modes=graph,compile,tuned,eager mode=graph
[[ "$device" == cuda* ]] || modes=tuned,eager mode=tuned
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
"$py" -c "import torch; print(torch.__version__, torch.cuda.is_available() and
torch.cuda.get_device_name())" >> "$out/gpu.txt" 2>&1

step() {  # step NAME TIMEOUT COMMAND...: run, keep its JSON and log, go on whatever happens
    local name=$1 limit=$2; shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" > >(tee "$out/$name.json") 2> "$out/$name.log"
    echo "== $name: exit $?"
    tail -n 25 "$out/$name.log"
}

# At most 8 files come back from a device call: gpu.txt, tests.log and 3 x (json, log). The
# benchmarks' own result files (--results "") are left out to stay within that limit (the
# device's copy of benchmarks/results/ does not come back): each step's JSON output is kept.
echo "== tests"
timeout 150 "$py" -m pytest -q -p no:cacheprovider -rs tests/train/test_fast.py \
    tests/train/test_batched.py > "$out/tests.log" 2>&1
echo "== tests: exit $?"
tail -n 15 "$out/tests.log"
step speed 150 "$py" benchmarks/speed.py --device "$device" --modes "$modes" --epochs 5 --fit \
    --json --results ""
step search_speed 90 "$py" benchmarks/search_speed.py --device "$device" --json --results ""
step accuracy 150 "$py" benchmarks/accuracy.py --device "$device" --eds 4 --max-epochs 100 \
    --mode "$mode" --json --results ""
