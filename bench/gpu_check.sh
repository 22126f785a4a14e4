#!/usr/bin/env bash
# The GPU checks of the training backends, in one call on a lent GPU machine (README, "Training on
# a GPU"). That machine has torch, transformers and PEFT but no unsloth, bitsandbytes, TRL, datasets
# or Prefect, and no registry: what it lacks travels in .gpu/ (git-ignored), made here by
# `bash bench/gpu_pack.sh`. Each check writes its own log; one failing does not stop the others.
#
#   bash bench/gpu_check.sh [checks...]     checks: lib bench real (default: lib bench)
#
# Logs and results go to /tmp/gpu-logs, and all of them in one gpu-logs.tgz into $OUT (the device
# tool brings back at most 8 files).
#
# lib:   the finetune libraries on SmolLM2's architecture (random weights, real tokenizer): unsloth
#        training in its own process + evaluation; hf + bitsandbytes 4-bit; and a real CUDA
#        out-of-memory error met with a capped memory share, which the back-off must survive.
# bench: bench/train_backends.py, both backends, SmolLM2-135M and a ~1B Llama, bf16 and 4-bit.
# real:  SmolLM2-135M-Instruct's real weights (the GGUF, carried in two parts .gpu/gguf.a + .gpu/gguf.b)
#        fine-tuned with unsloth on the demo config, and evaluated.
set -u
LOGS=/tmp/gpu-logs
mkdir -p $LOGS
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
       UNSLOTH_DISABLE_STATISTICS=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
DATA=.gpu/data
WORK=/tmp/loretune-gpu

# The carried packages once per machine; loretune itself as its installed layout (package-dir).
if [ ! -f /tmp/site/.unpacked ]; then
    mkdir -p /tmp/site && tar xzf .gpu/site.tgz -C /tmp/site && touch /tmp/site/.unpacked || exit 1
fi
rm -rf /tmp/lt && mkdir -p /tmp/lt/loretune && cp -r loretune/. /tmp/lt/loretune/
for d in chat flows tasks ingest multimodal training; do ln -s "$PWD/$d" "/tmp/lt/loretune/$d"; done
export PYTHONPATH=/tmp/lt:/tmp/site
mkdir -p $WORK

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import importlib.metadata as m, sys; v = lambda d: next((x.version for x in m.distributions(name=d)), 'absent'); print(sys.version.split()[0], *[f'{d} {v(d)}' for d in ('torch','transformers','peft','trl','datasets','accelerate','unsloth','unsloth_zoo','bitsandbytes','triton')])"
} > "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"

finetune() {  # name, timeout, then gpu_finetune.py's arguments
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" $PY bench/gpu_finetune.py --dataset $DATA/dataset --features $DATA/features.parquet \
        --tokenizer $DATA/tokenizer --work "$WORK/$name" --out "$LOGS/$name.json" "$@" > "$LOGS/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - start)) s"
}

for check in "${@:-lib bench}"; do for c in $check; do case $c in
lib)
    finetune unsloth 300 --backend unsloth &
    finetune hf-4bit 300 --backend hf --load-in-4bit --set training.max_steps=40 --set training.save_steps=20 &
    finetune oom 300 --backend hf --no-eval --memory-fraction 0.015 --set training.batch_size=64 \
        --set training.max_steps=4 --set training.save_steps=2 &
    wait
    for f in unsloth hf-4bit oom; do echo "== $f"; grep -E "^\||promotion:|times:|training run:|Error|error:|out of memory" "$LOGS/$f.log" | tail -30; tail -3 "$LOGS/$f.log"; done
    ;;
bench)
    start=$SECONDS
    timeout 420 $PY bench/train_backends.py --work $WORK/bench --models smollm2,1b --backends hf,unsloth \
        --quant bf16,4bit --steps 15 --warmup 3 --timeout 240 --seq-len 1024 --batch 4 --out "$LOGS/bench.json" > "$LOGS/bench.log" 2>&1
    echo "bench: exit $? in $((SECONDS - start)) s"; tail -25 "$LOGS/bench.log"
    ;;
real)
    if [ -f .gpu/gguf.a ] && [ -f .gpu/gguf.b ]; then
        cat .gpu/gguf.a .gpu/gguf.b > $WORK/smollm2.gguf
        sha256sum $WORK/smollm2.gguf
        for b in ${REAL_BACKENDS:-unsloth hf}; do finetune real-$b 400 --backend $b --gguf $WORK/smollm2.gguf & done
        wait
        for f in ${REAL_BACKENDS:-unsloth hf}; do f=real-$f; echo "== $f"; grep -E "^\||promotion:|times:|Error|error:" "$LOGS/$f.log" | tail -30; tail -3 "$LOGS/$f.log"; done
    else
        echo "real: the GGUF's two parts are not both here (.gpu/gguf.a, .gpu/gguf.b)"
    fi
    ;;
esac; done; done
[ -n "${OUT:-}" ] && tar czf "$OUT/gpu-logs.tgz" -C $LOGS . && echo "logs: \$OUT/gpu-logs.tgz"
