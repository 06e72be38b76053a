#!/usr/bin/env bash
# On one GPU, in under 8 minutes, Markdown tables of:
#  1. training img/s of ResNet-50 at 224 px, batch 128: medtransfer vs a bare PyTorch loop
#     (benchmarks/overhead.py), fp32 vs bf16 mixed precision with channels-last;
#  2. the train loader's img/s (data=folder, generated 224 px JPEGs, RAM cache, workers auto) against the
#     model's img/s of (1);
#  3. the whole `medtransfer-train experiment=pneumonia` command at 3 epochs against a bare script of the
#     same work, with medtransfer's breakdown (benchmarks/end_to_end.py), when PneumoniaMNIST is at $DATA.
# Each part is cut off after $TIMEOUT seconds and then has no row.
#
#   bash benchmarks/gpu.sh                      # results (JSON) go to a temporary directory
#   OUT_DIR=bench STEPS=50 ROUNDS=5 DATA=/data/pneumoniamnist.npz bash benchmarks/gpu.sh
set -euo pipefail

cd "$(dirname "$0")/.."
STEPS=${STEPS:-30}       # training steps per round and side
ROUNDS=${ROUNDS:-3}      # timed rounds (after one warm-up round); the median is reported
TIMEOUT=${TIMEOUT:-150}  # seconds per part
OUT_DIR=${OUT_DIR:-$(mktemp -d)}
DATA=${DATA:-../shared/data/pneumoniamnist/pneumoniamnist.npz}
mkdir -p "$OUT_DIR"

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
echo "== loader"
timeout "$TIMEOUT" python benchmarks/loader_rate.py --json "$OUT_DIR/loader.json" ||
    echo "the loader measurement failed or ran past ${TIMEOUT} s: no row for it" >&2

if [[ -f "$DATA" ]]; then
    echo
    echo "== end to end"
    timeout "$TIMEOUT" python benchmarks/end_to_end.py --accelerator gpu --rounds 2 --data "$DATA" \
        --json "$OUT_DIR/end_to_end.json" || echo "end_to_end failed or ran past ${TIMEOUT} s: no row for it" >&2
else
    echo "no PneumoniaMNIST at $DATA (set DATA=...): no end-to-end row" >&2
fi

echo
python - "$OUT_DIR" <<'EOF'
import json
import statistics
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
loader = out / "loader.json"
if loader.is_file() and results:
    rate = json.loads(loader.read_text())
    fastest = max(r["medtransfer_img_s"] for r in results.values())
    print(f"\n| train loader img/s (224 px, {rate['workers']} workers, RAM cache) | fastest medtransfer img/s above | loader / model |")
    print("|---:|---:|---:|")
    print(f"| {rate['img_s']:.0f} | {fastest:.0f} | {rate['img_s'] / fastest:.2f} |")
e2e = out / "end_to_end.json"
if e2e.is_file():
    r = json.loads(e2e.read_text())
    median = {side: statistics.median(w) for side, w in r["walls"].items()}
    print("\n| whole command, experiment=pneumonia, 3 epochs | bare script s | medtransfer-train s | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| median of {len(r['walls']['bare'])} alternating pairs | {median['bare']:.1f} | {median['medtransfer']:.1f} | {r['ratio']:.3f} |")
    print("\n| medtransfer-train stage (one run with timers) | s |")
    print("|---|---:|")
    for name, seconds in r["breakdown"]:
        print(f"| {name} | {seconds:.1f} |")
missing = [name for name in ("fp32", "bf16") if name not in results]
if missing:
    print(f"\nno result for: {', '.join(missing)}")
    sys.exit(1)
EOF
