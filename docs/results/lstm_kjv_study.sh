#!/usr/bin/env bash
# LSTM settings vs nn.Dropout on the King James Bible corpus (data=kjv, PTB size; needs `apt-get install -y bible-kjv`).
# Zaremba-style LM sized for a 2-core CPU: 2 x 128 (embedding 128), 10k vocabulary, batch 20 x 35 tokens, SGD lr 1
# halved after epoch 2, 4 epochs of 300 batches each (840k training tokens seen: about one pass over the 809k),
# OMP_NUM_THREADS=1 per run. Usage: docs/results/lstm_kjv_study.sh <out_root> <stage>; then `ard-report <out_root>`.
#   p05a / p05b: p = 0.5, 3 seeds: nn.Dropout, one pattern per step, time chunks G=4, sequence G=2/4, structured
#                G=1/2 (the two halves run side by side, one per core)
#   p05c:        p = 0.5, 3 seeds: structured G=4 (run after the others: it is the one fast setting left at 1.37x)
#   p05d:        p = 0.5, 3 seeds: the decoder site in 4 stratified groups, the LSTM sites one pattern per step
#                (the one-pattern LSTM speed with grouped decoder tokens)
#   p05e:        p = 0.5, 3 seeds: decoder in 4 groups, LSTM sites in 2 time chunks (stratified)
#   p05f:        p = 0.5, 3 seeds: decoder in 10 stratified groups, LSTM sites one pattern per step
#   rates03e / rates07e: p = 0.3 / 0.7, 3 seeds of the new LSTM default (decoder groups="auto", LSTM sites in 2
#                stratified time chunks) and nn.Dropout seeds 1, 2 (seed 0: the rates03 / rates07 stages)
#   rates03 / rates07: p = 0.3 / 0.7, 1 seed (time ran out for more): nn.Dropout, one pattern per step, sequence G=4
# Then: python docs/results/lstm_kjv/pareto.py --runs <out_root> --bench <ard-bench --lstm-settings json> --out ...
set -euo pipefail
out=${1:?out root}; stage=${2:?stage}
export OMP_NUM_THREADS=1
common=(experiment=lstm_kjv model.embed_dim=128 model.hidden_size=128 model.decay_after=2 trainer.max_epochs=4
        trainer.limit_train_batches=300 trainer.enable_progress_bar=false trainer.enable_model_summary=false
        callbacks=none ard.never_slower=false ard.measure_speedup=false)  # the settings as given, all steps
run() { python -m lightning_ard.app.train -m "${common[@]}" "hydra.sweep.dir=$out/$1" "${@:2}"; }
one=(ard.groups=1 ard.lstm_groups=1)
time4=(ard.groups=4 ard.lstm_groups=4)
seq() { echo "ard.groups=$1 ard.lstm_groups=$1 ard.lstm_mode=sequence"; }
struct() { echo "ard.groups=$1 ard.lstm_groups=$1 ard.lstm_mode=sequence ard.lstm_recurrent_p=\${ard.p}"; }
case $stage in
  p05a)
    run p05_dropout ard=dropout ard.p=0.5 seed=0,1,2
    run p05_one "${one[@]}" ard.p=0.5 seed=0,1,2
    run p05_struct1 $(struct 1) ard.p=0.5 seed=0,1,2
    run p05_struct2 $(struct 2) ard.p=0.5 seed=0,1,2 ;;
  p05b)
    run p05_seq2 $(seq 2) ard.p=0.5 seed=0,1,2
    run p05_seq4 $(seq 4) ard.p=0.5 seed=0,1,2
    run p05_time4 "${time4[@]}" ard.p=0.5 seed=0,1,2 ;;
  p05c)
    run p05_struct4 $(struct 4) ard.p=0.5 seed=0,1,2 ;;
  p05d)
    run p05_dec4 ard.groups=4 ard.lstm_groups=1 ard.p=0.5 seed=0,1,2 ;;
  p05e)
    run p05_dec4_time2 ard.groups=4 ard.lstm_groups=2 ard.p=0.5 seed=0,1,2 ;;
  p05f)
    run p05_dec10one ard.groups=10 ard.lstm_groups=1 ard.p=0.5 seed=${SEEDS:-0,1,2} ;;
  rates03e|rates07e)
    rate=0.${stage:6:1}
    run ${stage%e}_dropout_s12 ard=dropout ard.p=$rate seed=1,2
    run ${stage%e}_dec_time2 ard.lstm_groups=2 ard.p=$rate seed=0,1,2 ;;
  rates03|rates07)
    rate=0.${stage#rates0}
    run ${stage}_dropout ard=dropout ard.p=$rate seed=0
    run ${stage}_one "${one[@]}" ard.p=$rate seed=0
    run ${stage}_seq4 $(seq 4) ard.p=$rate seed=0 ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
