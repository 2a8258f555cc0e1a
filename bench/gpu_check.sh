#!/usr/bin/env bash
# The GPU checks, as one short script for a lent device (docs/benchmark.md, "On a GPU"):
#
#   JNN_DATA_DIR=<folder with the four Fashion-MNIST .gz files> bash bench/gpu_check.sh OUT_DIR
#
# 1. the layers' hand-written backward passes against jax.vjp, and the study engine's "one model
#    in the program equals the model alone", on the GPU (pytest, no compilation cache);
# 2. the study engine: the default study's 20 models (4 activations x 5 seeds) for a few epochs
#    with --layout auto (vmap off CPU) and --layout map, for model-epochs/s of each;
# 3. Conv2D's lowerings pass by pass (python -m bench.conv_lowering): is "auto" = cuDNN's
#    convolution right on this GPU (issue 20: keep cuDNN unless measured otherwise);
# 4. the CNN's manual step with one layer's backward by jax.vjp at a time (bench.backward_probe:
#    which hand-written backward the manual/jax.grad gap comes from on this GPU);
# 5. the benchmark's ceiling, MLP epoch, models-per-program, CNN, VGG16 and study sections,
#    PyTorch on CUDA at JAX's float32 arithmetic (TF32 by default there).
# Each step has its own time limit and its exit code is logged, so one failing step never hides
# the others. Everything lands in OUT_DIR: gpu_check.log and one results.tar.gz (checkpoints
# left out). Each step's limit is the first number of its line; they sum to 11.4 minutes at most
# (the first H200 run, 2026-12-04, took 6.7).
set -u
out=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
: "${JNN_DATA_DIR:?set JNN_DATA_DIR to the folder with the Fashion-MNIST .gz files}"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg JNN_TEST_JAX_CACHE=0
if [ -e "$out/runs" ]; then
    echo "gpu_check: $out/runs already exists; pass a new or empty OUT_DIR" >&2
    exit 2
fi
mkdir -p "$out/runs"
log="$out/gpu_check.log"
: >"$log"

step() {  # step NAME LIMIT_S COMMAND...: run it with a time limit, log its output and exit code
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    echo "== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "== $name: exit $rc in $(($(date +%s) - start)) s" | tee -a "$log"
}

step env 60 $py -c "import jax, jaxlib, flax, optax, orbax.checkpoint as o; \
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, \
'orbax', o.__version__); print(jax.devices())"
nvidia-smi -L >>"$log" 2>&1
step tests 100 $py -m pytest -q -p no:cacheprovider tests/test_layer_conv.py \
    tests/test_layer_maxpool.py tests/test_layers.py "tests/test_study.py::test_one_model_equals_the_model_alone"
for layout in auto map; do
    step "study-$layout" 75 $py -m experiments.mlp_sweep --seeds 5 --epochs 4 --save-at 4 \
        --no-sklearn --layout "$layout" --out "$out/runs/study-$layout"
done
step conv_lowering 100 $py -m bench.conv_lowering --reps 3 --out "$out/runs/conv_lowering"
step backward_probe 75 $py -m bench.backward_probe --reps 3 --out "$out/runs/backward_probe"
step benchmark 200 $py -m bench.benchmark --reps 3 --torch-device cuda \
    --sections ceiling,train_epoch,models_per_program,cnn,vgg,study --out "$out/runs/benchmark"
tar -czf "$out/results.tar.gz" -C "$out" --exclude=checkpoints runs && rm -rf "$out/runs"
echo "== done: $log and $out/results.tar.gz" | tee -a "$log"
