#!/usr/bin/env bash
# The demo behind `make demo`, from raw logs to an evaluated SavedModel:
#   1. escm2-synth     simulated Ali-CCP logs plus the true rates behind them
#   2. escm2-convert   raw logs -> TFRecords and vocabularies (train and test)
#   3. escm2-train     ESCM2-DR with configs/demo.flags, exported at the end
#   4. escm2-evaluate  the export, scored against the simulator's ground truth
#
#   bash scripts/demo.sh [OUTPUT_DIR]     (default: demo_output)
#
# The escm2-* commands must be on PATH (the Makefile puts .venv/bin first).
# DEMO_NUM_TRAIN and DEMO_NUM_TEST change the data size (200000 and 50000).
# A rerun simulates and converts again (the same data: the seed is fixed);
# an interrupted training run resumes from its last completed epoch.
set -euo pipefail

out="${1:-demo_output}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
num_train="${DEMO_NUM_TRAIN:-200000}"
num_test="${DEMO_NUM_TEST:-50000}"

step() {
  printf '\n==== [%4ss] %s\n' "${SECONDS}" "$*"
}

step "1/4 Simulating ${num_train} training and ${num_test} test impressions" \
  "into ${out}/raw"
escm2-synth --output_dir="${out}/raw" --num_train="${num_train}" \
  --num_test="${num_test}" --seed=0

for split in train test; do
  step "2/4 Converting the ${split} split into ${out}/data/${split}"
  # The converter refuses a non-empty output directory.
  rm -rf "${out}/data/${split}"
  escm2-convert --input_format=aliccp \
    --skeleton="${out}/raw/sample_skeleton_${split}.csv" \
    --common_features="${out}/raw/common_features_${split}.csv" \
    --output_dir="${out}/data/${split}"
done

step "3/4 Training ESCM2-DR with configs/demo.flags into ${out}/model"
escm2-train --flagfile="${repo}/configs/demo.flags" \
  --train_data="${out}/data/train/*.tfrecord.gz" \
  --eval_data="${out}/data/test/*.tfrecord.gz" \
  --vocab_dir="${out}/data/train/vocab" \
  --ground_truth="${out}/raw/ground_truth_test.csv" \
  --model_dir="${out}/model" --export_dir="${out}/export"

step "4/4 Evaluating the newest export in ${out}/export against the ground truth"
escm2-evaluate --data="${out}/data/test/*.tfrecord.gz" \
  --saved_model="${out}/export" \
  --ground_truth="${out}/raw/ground_truth_test.csv" \
  --output="${out}/evaluation.json"

step "Done"
python3 - "${out}/evaluation.json" <<'EOF'
import json
import sys

with open(sys.argv[1]) as f:
  m = json.load(f)
print(f"Test impressions {m['count']:.0f}, clicks {m['clicks']:.0f}, "
      f"conversions {m['conversions']:.0f}.")
print(f"AUC: CTR {m['auc_ctr']:.4f}, CVR on clicks {m['auc_cvr']:.4f}, "
      f"CTCVR {m['auc_ctcvr']:.4f}; CVR against the true post-click "
      f"conversion of every impression {m['auc_cvr_truth']:.4f}.")
print(f"Mean pCVR over all impressions minus the true mean CVR "
      f"({m['true_cvr_mean']:.4f}): {m['cvr_bias']:+.4f} "
      f"(on clicked impressions: {m['cvr_bias_clicked']:+.4f}).")
print(f"Calibration, mean prediction / mean label (/ expected label): "
      f"CTR {m['calibration_ctr']:.3f} ({m['calibration_ctr_truth']:.3f}), "
      f"CVR on clicks {m['calibration_cvr']:.3f} "
      f"({m['calibration_cvr_truth']:.3f}), CTCVR "
      f"{m['calibration_ctcvr']:.3f} ({m['calibration_ctcvr_truth']:.3f}).")
EOF
echo "Model: ${out}/model (TensorBoard logs in ${out}/model/logs)," \
  "SavedModel: ${out}/export, metrics: ${out}/evaluation.json."
