#!/usr/bin/env bash
# One time-boxed GPU check, for a session that is lent a CUDA machine (device tool):
# the gpu-marked tests (fast path vs reference on CUDA, bf16 autocast, no host sync per
# search step), the search-step benchmark on CUDA at the paper batch, and the default
# search on CUDA. Uses the machine's own torch; the repo is put on PYTHONPATH, nothing
# is installed. Logs go to $OUT (the device tool brings them back).
set -u
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== gpu tests"
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
echo "== benchmark: DARTS space, PC-DARTS, C=16, 8 cells, K=4, batch 256 (paper)"
timeout 150 python3 benchmarks/search_step.py --device cuda --space darts --method pc-darts --C 16 --cells 8 \
    --batch 256 --k 4 --steps 12 --rounds 3 2>&1 | tee "$OUT/bench_darts_256.json" | tail -3
echo "== benchmark: NB201 space, PC-DARTS, C=16, N=5, K=4, batch 64"
timeout 100 python3 benchmarks/search_step.py --device cuda --space nb201 --method pc-darts --C 16 --cells 5 \
    --batch 64 --k 4 --steps 12 --rounds 3 2>&1 | tee "$OUT/bench_nb201_64.json" | tail -3
echo "== default search on CUDA"
/usr/bin/time -v timeout 150 python3 -m pcdarts search --device cuda --out /tmp/gpu_quick --no-progress \
    2>&1 | tee "$OUT/quick.log" | grep -E "genotype|arch weights|error|Elapsed|Maximum resident" 
