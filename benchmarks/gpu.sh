#!/usr/bin/env bash
# Training throughput of ResNet-50 at 224 px, batch 128, on one GPU: medtransfer vs a bare PyTorch loop
# (benchmarks/overhead.py), fp32 vs bf16 mixed precision with channels-last. Prints a Markdown table.
# About 2-4 minutes on an H100/H200 (each configuration is cut off after $TIMEOUT seconds).
#
#   bash benchmarks/gpu.sh                      # results (JSON) go to a temporary directory
#   OUT_DIR=bench STEPS=50 ROUNDS=5 bash benchmarks/gpu.sh
set -euo pipefail

cd "$(dirname "$0")/.."
STEPS=${STEPS:-30}       # training steps per round and side
ROUNDS=${ROUNDS:-3}      # timed rounds (after one warm-up round); the median is reported
TIMEOUT=${TIMEOUT:-210}  # seconds per configuration
OUT_DIR=${OUT_DIR:-$(mktemp -d)}
mkdir -p "$OUT_DIR"

if [[ ! -f benchmarks/overhead.py ]]; then
    echo "benchmarks/overhead.py is missing: this script runs it for each configuration." >&2
    exit 1
fi

echo "GPU:   $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1)"
python -c 'import torch; print(f"torch: {torch.__version__}  CUDA: {torch.version.cuda}  cuDNN: {torch.backends.cudnn.version()}")'
echo "ResNet-50, 224 px, batch 128, $STEPS steps x $ROUNDS rounds per side; JSON in $OUT_DIR"

run() {  # run NAME overhead.py-flags...: one configuration, its JSON in $OUT_DIR/NAME.json
    local name=$1
    shift
    echo
    echo "== $name"
    if ! timeout "$TIMEOUT" python benchmarks/overhead.py --backbone resnet50 --size 224 --batch 128 \
        --accelerator gpu --steps "$STEPS" --rounds "$ROUNDS" --json "$OUT_DIR/$name.json" "$@"; then
        echo "$name failed or ran past ${TIMEOUT} s: no row for it" >&2
        rm -f "$OUT_DIR/$name.json"
    fi
}

run fp32 --precision 32-true
run bf16 --precision bf16-mixed --channels-last

echo
python - "$OUT_DIR" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
results = {name: json.loads((out / f"{name}.json").read_text()) for name in ("fp32", "bf16") if (out / f"{name}.json").is_file()}
fp32 = results.get("fp32")
print("| precision | channels_last | bare img/s | medtransfer img/s | medtransfer / bare | bf16/fp32 speedup (bare, medtransfer) |")
print("|---|---|---:|---:|---:|---:|")
for name, r in results.items():
    if name == "bf16" and fp32:
        speedup = f"{r['bare_img_s'] / fp32['bare_img_s']:.2f}x, {r['medtransfer_img_s'] / fp32['medtransfer_img_s']:.2f}x"
    else:
        speedup = "1.00x (reference)" if name == "fp32" else "n/a (no fp32 row)"
    c = r["config"]
    print(
        f"| {c['precision']} | {str(bool(c.get('channels_last'))).lower()} | {r['bare_img_s']:.0f} | "
        f"{r['medtransfer_img_s']:.0f} | {r['ratio']:.3f} | {speedup} |"
    )
missing = [name for name in ("fp32", "bf16") if name not in results]
if missing:
    print(f"\nno result for: {', '.join(missing)}")
    sys.exit(1)
EOF
