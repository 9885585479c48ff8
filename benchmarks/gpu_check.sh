#!/usr/bin/env bash
# The one script a session with a GPU runs (issue 11): the bf16 and CUDA/NCCL tests and a compiled
# training on the GPU (CUDA graphs: one compile while β changes, none left out), then the train-step
# benchmark at every size in fp32 and bf16 (the issue's target sizes first), then the compiled step at
# (c) with CUDA graphs (`train.compile: reduce-overhead`: one launch a graph, so the step is no longer
# launch-bound), then IW-PPL's K=30 decoder passes batched against the official loop, then the
# conditional (CVAE) step on GPT-2 and BART at (a) and (c) in bf16 (issue 9). Everything goes to
# stdout and, section by section, to $OUT/<section>.log when $OUT is set, so a section that fails or
# times out loses none of the others. Under 10 minutes in all (each section has its
# own `timeout`). From the repository root, with the machine's own torch (no install):
#
#     bash benchmarks/gpu_check.sh                       # on the GPU machine
#     bash benchmarks/gpu_check.sh --device cpu --quick  # the CPU dry run of every section
set -u
DEVICE=cuda
QUICK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    *) echo "usage: $0 [--device cuda|cpu] [--quick]" >&2; exit 2 ;;
  esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOGS="${OUT:-}"
THREADS=$(( $(nproc) < 8 ? $(nproc) : 8 ))

section() {  # section NAME SECONDS COMMAND...: run under a timeout, log to stdout and $OUT/NAME.log
  local name="$1" limit="$2"; shift 2
  echo; echo "=== $name (limit ${limit}s): $*"
  local start=$SECONDS
  if [ -n "$LOGS" ]; then
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  else
    timeout "$limit" "$@" 2>&1
  fi
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc$([ "$rc" = 124 ] && echo ' (timed out)') after $(( SECONDS - start ))s"
}

section environment 20 bash -c 'nvidia-smi -L 2>/dev/null || echo "no nvidia-smi";
  python3 -c "import torch, transformers; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__,
    \"cuda\", torch.cuda.is_available(), torch.cuda.device_count(), \"bf16\", torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    \"tf32\", torch.backends.cuda.matmul.allow_tf32, \"nccl\", torch.distributed.is_nccl_available())"'
section tests 180 python3 -m pytest -q -rs -p no:cacheprovider tests/test_precision.py tests/test_ddp_cuda.py \
  tests/test_flops.py tests/test_speed_switches.py tests/test_device_placement.py \
  -k "not test_speed_switches or compiled_training"
if [ -n "$QUICK" ]; then SIZES=c,a; STEPS=2; else SIZES=c,b32,b,a; STEPS=20; fi
section benchmark 150 python3 benchmarks/train_speed.py --device "$DEVICE" --threads "$THREADS" --sizes "$SIZES" \
  --precisions fp32,bf16 --steps "$STEPS" --warmup 3 $QUICK
section benchmark_compiled 130 python3 benchmarks/train_speed.py --device "$DEVICE" --threads "$THREADS" --sizes c \
  --precisions bf16 --steps "$STEPS" --warmup 3 --compile reduce-overhead $QUICK
section iw_cost 30 python3 benchmarks/iw_cost.py --device "$DEVICE" --threads "$THREADS" $([ -n "$QUICK" ] && echo --k 2 --batch 2)
section benchmark_conditional 80 python3 benchmarks/train_speed.py --device "$DEVICE" --threads "$THREADS" \
  --task conditional --sizes a,c --precisions bf16 --steps "$STEPS" --warmup 3 $QUICK
echo; echo "=== gpu_check done in ${SECONDS}s"
