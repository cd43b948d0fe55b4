#!/usr/bin/env bash
# The library on a CUDA GPU, in one go (at most about 10 minutes; 7 sizes of the scaling benchmark at 60 s each):
#   1. tests/test_device.py: exact outcomes, regularized objectives and gradients, each method's
#      short run and evaluate(), on the GPU against the CPU, for one cell of every setting;
#   2. scripts/bench_exact.py --device cuda: the exact path's profiles per second on the GPU;
#   3. scripts/bench_scaling.py --device cuda --quick (sales, gridworld): time and GPU memory as sizes grow;
#   4. one training run per method with device=cuda through scripts/train.py.
# Every part runs even when an earlier one fails; the exit status says whether all passed.
# Usage: bash scripts/gpu_check.sh [OUTPUT_DIR]   (default outputs/gpu_check-<date>; logs land there)
# DEVICE=cpu bash scripts/gpu_check.sh runs the same parts on the CPU (a dry run of this script).
set -uo pipefail
device=${DEVICE:-cuda}
out=${1:-outputs/gpu_check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=()

part() {  # part NAME COMMAND...: runs the command, its output to the terminal and to $out/NAME.log
    local name=$1
    shift
    echo "== $name: $*"
    if ! "$@" 2>&1 | tee "$out/$name.log"; then
        failed+=("$name")
    fi
}

python -c "import sys, torch; d = torch.device(sys.argv[1]); assert d.type == 'cpu' or torch.cuda.is_available(), f'{d} is not visible to torch'; print(torch.__version__, d, torch.cuda.get_device_name(d) if d.type == 'cuda' else '')" "$device" || exit 1
part test_device python -m pytest tests/test_device.py --device $device -q -rs
part bench_exact python scripts/bench_exact.py --device $device --repeats 3 --lp-profiles 10
part bench_scaling python scripts/bench_scaling.py --device $device --quick --settings seq_sales,gridworld --timeout 60
for method in reg_lp zeroth_order grid; do
    part "train_$method" python scripts/train.py env=seq_sales env.n_agents=3 env.size=2 method=$method device=$device \
        output_dir="$out/train_$method" progress=false
done
if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]} (logs in $out)"
    exit 1
fi
echo "all parts passed (logs in $out)"
