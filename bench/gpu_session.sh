#!/usr/bin/env bash
# The GPU measurements of issues 16 and 17, as run on a lent GPU machine (see
# docs/gpu.md). The machine has PyTorch, onnx and onnxruntime but not Optuna, and no
# ../shared: beforehand, on the development machine,
#   python tools/cifar10_pack.py pack ../shared/data/cifar10.npz .gpu/cifar10_pack.npz
#   pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
#       --python-version 3.12 -d .whl optuna alembic sqlalchemy mako colorlog  # pinned versions
# then run from the repository root there:
#   bash bench/gpu_session.sh smoke        # every --device cuda path, tiny
#   bash bench/gpu_session.sh throughput   # mbv3-w1.0 @224 on JPEGs, fp32 vs bf16
#   bash bench/gpu_session.sh sandwich     # sandwich-step seconds, both conv layouts
#   bash bench/gpu_session.sh cifar MIN    # DεpS CIFAR-10 supernet for MIN minutes + ofa run
#   bash bench/gpu_session.sh spec MIN     # the supernet, then bench/cifar_specialise.py
#   bash bench/gpu_session.sh resume       # continue spec (a cold machine: from .gpu/c10.tar.*;
#                                          # SPEC_SUPERNET=DIR: that supernet, e.g. job's)
#   bash bench/gpu_session.sh job EPOCHS   # ofa run --device cuda end to end (training
#                                          # included), detached; the 1,000-subnet predictor
#                                          # curve beside it; the benchmark on its supernet
#   bash bench/gpu_session.sh collect      # (next call, warm machine) wait for job, pack it
# Everything worth keeping goes to $OUT (log.txt, results.tar, supernet.part-*).
set -u
T0=$(date +%s)
DEV=${DEV:-cuda}  # DEV=cpu: a dry run of this script on a machine without a GPU
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
if [ "$DEV" != cpu ] && [ ! -d /tmp/site/optuna ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD:/tmp/site
step() {  # step NAME SECONDS CMD...: time-limited, logged, never stops the script
    local name=$1 limit=$2 t0
    shift 2
    t0=$(date +%s)
    echo "=== $name (limit ${limit} s)"
    timeout "$limit" "$@"
    echo "=== $name: rc=$? in $(( $(date +%s) - t0 )) s"
}
echo "=== $(date -u) $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv || true
python3 -c "import torch, torchvision, onnxruntime, onnx, optuna, safetensors
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(),
      'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__,
      'optuna', optuna.__version__)"
[ -f /tmp/cifar10.npz ] || python3 tools/cifar10_pack.py unpack .gpu/cifar10_pack.npz /tmp/cifar10.npz
C10=(--dataset cifar10 --data /tmp/cifar10.npz --space mbv3-cifar)

O=(python3 -m ofa.cli)
left() {  # seconds left of this call's BUDGET (default 560), minus $1
    echo $(( T0 + ${BUDGET:-560} - $(date +%s) - ${1:-0} ))
}
keep_supernet() {  # the run folder, in 15 MB parts, for a later call on a cold machine
    local ex=()
    [ -f /tmp/c10/supernet.safetensors ] && ex=(--exclude=c10/checkpoint.pt)
    tar -cf - "${ex[@]}" -C /tmp c10 | split -b 15M -d - "$OUT/c10.tar.part-"
}
cifar_supernet() {  # cifar_supernet MINUTES: DεpS on CIFAR-10 to /tmp/c10 (batch 512, bf16)
    step cifar-supernet $(( $1 * 60 + 90 )) python3 bench/gpu_train.py cifar \
        --npz /tmp/cifar10.npz --minutes "$1" --batch-size 512 --lr-scale 0.35 \
        --workers 4 --precisions bf16 --out /tmp/c10 --json "$OUT/gpu_train_cifar.json" \
        --device "$DEV"
}
specialise() {  # specialise LIMIT_S: bench/cifar_specialise.py, resumable in /tmp/spec
    step specialise "$1" python3 bench/cifar_specialise.py --supernet "${SPEC_SUPERNET:-/tmp/c10}" \
        --data /tmp/cifar10.npz --device "$DEV" --work /tmp/spec \
        --samples "${SPEC_SAMPLES:-100,300}" --random "${SPEC_RANDOM:-100}" \
        --finetune-epochs "${SPEC_FT_EPOCHS:-3}" ${SPEC_ARGS:-} --json "$OUT/cifar_specialise.json"
    tar -cf "$OUT/spec.tar" --exclude='*.pt' --exclude='*.safetensors' -C /tmp spec
}
JO=/tmp/jobout  # what the detached job writes (it outlives the call that starts it)
collect() {  # wait for the detached job while this call's budget lasts, then pack it to $OUT
    while [ ! -f $JO/done ] && [ "$(left 25)" -gt 0 ]; do sleep 5; done
    [ -f $JO/done ] && echo "=== job finished" || echo "=== job still running"
    for f in run spec curve; do  # the end of each log, progress bars cut to their last state
        echo "--- $f.log"; tr '\r' '\n' < $JO/$f.log 2>/dev/null | grep -v '^ *$' | tail -n 25
    done
    cp $JO/log.txt "$OUT/job_log.txt"
    tar -cf "$OUT/job.tar" --exclude='*.onnx' --exclude='*.tflite' --exclude='*.npz' \
        --exclude='*.pt' --exclude='*.safetensors' -C /tmp jobout runs spec spec1000g 2>/dev/null
    local f=/tmp/runs/c10job/supernet/supernet.safetensors
    [ -f $f ] && split -b 15M -d $f "$OUT/c10job_supernet.safetensors.part-"
    true
}
case ${1:-smoke} in
smoke)  # every --device cuda path once, tiny (2 min)
    step train-smoke 100 "${O[@]}" train "${C10[@]}" --schedule deps \
        --epochs "${SMOKE_EPOCHS:-0.3}" --batch-size "${SMOKE_BATCH:-512}" --lr-scale 0.35 \
        --device "$DEV" --workers 4 --eval-images 500 --out /tmp/smoke
    step eval-smoke 45 "${O[@]}" eval --checkpoint /tmp/smoke --subnet max --device "$DEV"
    step eval-smoke-fp32 45 "${O[@]}" eval --checkpoint /tmp/smoke --subnet max \
        --device "$DEV" --precision fp32
    step predictor-smoke 60 "${O[@]}" predictor build --checkpoint /tmp/smoke --samples 12 \
        --device "$DEV" --epochs 50
    step finetune-smoke 60 "${O[@]}" finetune --checkpoint /tmp/smoke --subnet min \
        --epochs 0.05 --device "$DEV" --out /tmp/smoke_ft
    step export-smoke 60 "${O[@]}" export --checkpoint /tmp/smoke_ft --formats onnx-fp32 \
        --out /tmp/smoke_x
    ;;
throughput)  # mbv3-w1.0 @224 on 10,000 JPEGs, fp32 vs bf16 (2 min)
    step throughput 200 python3 bench/gpu_train.py throughput --npz /tmp/cifar10.npz \
        --folder /tmp/jpeg --workers $(( $(nproc) - 1 )) --device "$DEV" ${TP_ARGS:-} \
        --json "$OUT/gpu_train_throughput.json"
    ;;
sandwich)  # seconds per sandwich step, both convolution layouts (1-3 min)
    for v in auto cudnn; do
        step "sandwich-$v" 150 python3 bench/gpu_train.py sandwich --npz /tmp/cifar10.npz \
            --variant $v --steps "${2:-40}" --batch-size 512 --precisions bf16 \
            --device "$DEV" --json "$OUT/gpu_train_sandwich_$v.json"
    done
    ;;
cifar)  # cifar MINUTES RUN_LIMIT_S SAMPLES: a DεpS supernet, then ofa run --device cuda on it
    cifar_supernet "${2:-4}"
    f=/tmp/c10/supernet.safetensors
    [ -f $f ] || f=/tmp/c10/checkpoint.pt
    split -b 15M -d $f "$OUT/$(basename $f).part-"  # 16 MiB per returned file
    step run-cuda "${3:-200}" "${O[@]}" run --supernet /tmp/c10 --root /tmp/runs \
        --name c10gpu --device "$DEV" --samples "${4:-300}" --formats onnx-fp32 --lut-runs 10
    tar -cf "$OUT/results.tar" --exclude='*.onnx' --exclude='*.tflite' --exclude='*.npz' \
        -C /tmp c10/run.json c10/metrics.jsonl c10/schedule.json runs
    ;;
spec)  # spec MINUTES: a DεpS supernet, then the issue-17 benchmark for the call's rest
    cifar_supernet "${2:-4}"
    keep_supernet
    specialise "$(left 15)"
    ;;
resume)  # continue spec; on a cold machine the supernet comes from the carried .gpu/c10.tar.*
    [ -n "${SPEC_SUPERNET:-}" ] || [ -d /tmp/c10 ] || cat .gpu/c10.tar.part-* | tar -xf - -C /tmp \
        || exit 1
    specialise "$(left 15)"
    if [ "${RUN_CUDA:-0}" = 1 ] && [ "$(left)" -gt 120 ]; then  # issue 16: ofa run on the GPU
        step run-cuda "$(left 10)" "${O[@]}" run --supernet /tmp/c10 --root /tmp/runs \
            --name c10gpu --device "$DEV" --samples 100 --formats onnx-fp32 --lut-runs 10
        tar -cf "$OUT/run.tar" --exclude='*.onnx' --exclude='*.npz' --exclude='*.pt' \
            --exclude='*.safetensors' -C /tmp runs
    fi
    ;;
job)  # job EPOCHS: the whole job on the GPU, detached (setsid) so that it outlives this call
    mkdir -p $JO
    OUT=$JO setsid nohup bash bench/gpu_session.sh job-run "${2:-20}" >/dev/null 2>&1 < /dev/null &
    sleep 5
    collect
    ;;
job-run)  # job's body (log and results in $JO): ofa run --device cuda on CIFAR-10 with
          # training; beside it the predictor curve to 1,000 subnets on the carried supernet;
          # once the run's predictor dataset exists, the issue-17 benchmark on its supernet
    if [ -f runs/spec1000/acc.jsonl ] && [ ! -f /tmp/spec1000g/acc.jsonl ]; then
        mkdir -p /tmp/spec1000g  # continue the rows measured so far (their header: this path)
        python3 -c "import json, pathlib, sys; rows = open(sys.argv[1]).read().splitlines()
h = json.loads(rows[0]); h['run'] = str(pathlib.Path(sys.argv[2]).resolve())
open(sys.argv[3], 'w').write('\n'.join([json.dumps(h), *rows[1:]]) + '\n')" \
            runs/spec1000/acc.jsonl runs/gpu9/c10 /tmp/spec1000g/acc.jsonl
    fi
    if [ -d runs/gpu9/c10 ]; then  # the curve's supernet, when carried (measured: 2026-11-26)
        step curve1000 "${CURVE_LIMIT:-1200}" python3 bench/cifar_specialise.py \
            --supernet runs/gpu9/c10 --data /tmp/cifar10.npz --device "$DEV" \
            --work /tmp/spec1000g --samples "${CURVE_SAMPLES:-100,300,1000}" --predictor-only \
            > $JO/curve.log 2>&1 &
    fi
    step run-cuda "${RUN_LIMIT:-1500}" "${O[@]}" run "${C10[@]}" --schedule deps --epochs "$2" \
        --batch-size 512 --lr-scale 0.35 --device "$DEV" --workers 8 \
        --samples "${JOB_SAMPLES:-300}" --finetune-epochs "${JOB_FT:-1}" --formats onnx-fp32 \
        --root /tmp/runs --name c10job ${JOB_ARGS:-} > $JO/run.log 2>&1 &
    run_pid=$!
    S=/tmp/runs/c10job/supernet
    D=$S/acc_predictor.dataset.jsonl  # header + one line per subnet
    complete() { [ "$(cat $D 2>/dev/null | wc -l)" -gt "${JOB_SAMPLES:-300}" ]; }
    while kill -0 $run_pid 2>/dev/null && ! complete; do sleep 5; done
    if complete; then  # the run's dataset is the benchmark's (it fits its own predictor)
        mkdir -p /tmp/spec
        [ -f /tmp/spec/acc.jsonl ] || cp $D /tmp/spec/acc.jsonl
        SPEC_SUPERNET=$S SPEC_ARGS="--skip-finetune ${SPEC_ARGS:-}" specialise "${SPEC_LIMIT:-900}" \
            > $JO/spec.log 2>&1
    fi
    wait
    touch $JO/done
    ;;
collect)  # after job, on the same warm machine: wait for it (this call's budget), pack
    collect
    ;;
esac
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv || true
