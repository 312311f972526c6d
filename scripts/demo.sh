#!/usr/bin/env bash
# The demo behind `make demo`, from raw logs to evaluated SavedModels:
#   1. escm2-synth     simulated Ali-CCP logs plus the true rates behind them
#   2. escm2-convert   raw logs -> TFRecords and vocabularies (train and test)
#   3. escm2-train     the estimator chosen below, with configs/demo.flags
#   4. escm2-train     ESMM, the same way on the same data, for comparison
#   5. escm2-evaluate  both exports, scored against the simulator's ground truth
#
#   bash scripts/demo.sh [OUTPUT_DIR]     (default: demo_output)
#
# The escm2-* commands must be on PATH (the Makefile puts .venv/bin first).
# DEMO_NUM_TRAIN and DEMO_NUM_TEST change the data size (200000 and 50000);
# the users and items scale with DEMO_NUM_TRAIN.
# A rerun simulates and converts again (the same data: the seed is fixed);
# an interrupted training run resumes from its last completed epoch.
set -euo pipefail

out="${1:-demo_output}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
num_train="${DEMO_NUM_TRAIN:-200000}"
num_test="${DEMO_NUM_TEST:-50000}"
# The estimator the study finds least biased at the release's density: ESCM2-DR
# keeps 0.03 of ESMM's entire-space CVR bias over five seeds (docs/results.md,
# "The release regime with today's defaults").
estimator="dr"

step() {
  printf '\n==== [%4ss] %s\n' "${SECONDS}" "$*"
}

# train LOSS MODEL_DIR EXPORT_DIR
train() {
  escm2-train --flagfile="${repo}/configs/demo.flags" --loss="$1" \
    --train_data="${out}/data/train/*.tfrecord.gz" \
    --eval_data="${out}/data/test/*.tfrecord.gz" \
    --vocab_dir="${out}/data/train/vocab" \
    --ground_truth="${out}/raw/ground_truth_test.csv" \
    --model_dir="$2" --export_dir="$3"
}

# evaluate EXPORT_DIR OUTPUT_JSON
evaluate() {
  escm2-evaluate --data="${out}/data/test/*.tfrecord.gz" \
    --saved_model="$1" --ground_truth="${out}/raw/ground_truth_test.csv" \
    --output="$2"
}

step "1/5 Simulating ${num_train} training and ${num_test} test impressions" \
  "into ${out}/raw"
# The Tianchi release's density: about 60 training impressions per user and
# 90 per item (the simulator's default world has 6 per item, too few to learn
# the ids' click propensities from).
escm2-synth --output_dir="${out}/raw" --num_train="${num_train}" \
  --num_test="${num_test}" --num_users="$((num_train / 60))" \
  --num_items="$((num_train / 90))" --seed=0

for split in train test; do
  step "2/5 Converting the ${split} split into ${out}/data/${split}"
  # The converter refuses a non-empty output directory.
  rm -rf "${out}/data/${split}"
  escm2-convert --input_format=aliccp \
    --skeleton="${out}/raw/sample_skeleton_${split}.csv" \
    --common_features="${out}/raw/common_features_${split}.csv" \
    --output_dir="${out}/data/${split}"
done

step "3/5 Training --loss=${estimator} with configs/demo.flags into" \
  "${out}/model"
train "${estimator}" "${out}/model" "${out}/export"

step "4/5 Training ESMM the same way into ${out}/esmm/model"
train esmm "${out}/esmm/model" "${out}/esmm/export"

step "5/5 Evaluating the newest exports against the ground truth"
evaluate "${out}/export" "${out}/evaluation.json"
evaluate "${out}/esmm/export" "${out}/esmm/evaluation.json"

step "Done"
python3 - "${estimator}" "${out}/evaluation.json" \
  "${out}/esmm/evaluation.json" <<'EOF'
import json
import sys

NAMES = {"naive": "naive", "esmm": "ESMM", "ipw": "ESCM2-IPW",
         "dr": "ESCM2-DR", "dr_jl": "DR-JL", "mrdr": "MRDR"}
name = NAMES.get(sys.argv[1], sys.argv[1])
with open(sys.argv[2]) as f:
  m = json.load(f)
with open(sys.argv[3]) as f:
  esmm = json.load(f)
print(f"Test impressions {m['count']:.0f}, clicks {m['clicks']:.0f}, "
      f"conversions {m['conversions']:.0f}.")
print(f"{name}: AUC: CTR {m['auc_ctr']:.4f}, CVR on clicks "
      f"{m['auc_cvr']:.4f}, CTCVR {m['auc_ctcvr']:.4f}; CVR against the true "
      f"post-click conversion of every impression {m['auc_cvr_truth']:.4f}.")
print(f"{name}: calibration, mean prediction / mean label (/ expected "
      f"label): CTR {m['calibration_ctr']:.3f} "
      f"({m['calibration_ctr_truth']:.3f}), CVR on clicks "
      f"{m['calibration_cvr']:.3f} ({m['calibration_cvr_truth']:.3f}), CTCVR "
      f"{m['calibration_ctcvr']:.3f} ({m['calibration_ctcvr_truth']:.3f}).")
print(f"Entire-space CVR: the true mean over all test impressions is "
      f"{m['true_cvr_mean']:.4f}; mean pCVR and its bias:")
for label, metrics in (("ESMM", esmm), (name, m)):
  print(f"  {label:<10} {metrics['true_cvr_mean'] + metrics['cvr_bias']:.4f}"
        f"  bias {metrics['cvr_bias']:+.4f} (on clicked impressions: "
        f"{metrics['cvr_bias_clicked']:+.4f})")
EOF
echo "Models: ${out}/model and ${out}/esmm/model (TensorBoard logs in their" \
  "logs/), SavedModels: ${out}/export and ${out}/esmm/export, metrics:" \
  "${out}/evaluation.json and ${out}/esmm/evaluation.json."
