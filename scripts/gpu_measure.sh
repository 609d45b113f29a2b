#!/usr/bin/env bash
# GPU measurement of dn, run on the GPU machine from the checkout's root: bash scripts/gpu_measure.sh
# Needs the wheels in .gpu/whl (see ../shared/gpu/README.md; add imagecodecs there for TIFF inputs
# OpenSlide does not open). Appends its output to $LOG.
# Issues 11 and 18: CUDA tests, the DN layer's cost per tile eager and compiled (plain vs dense
# forward, both apply forms), dn bench eager and compiled (bundled and CycleGAN-size model), and
# dn translate on a 16384² slide with GPU utilisation, --compile off and on; issue 19: two workers
# on one GPU against one process. Not yet run: no GPU has been lent since the pipeline was
# rewritten. It runs longer than one device call (600 s): split it at the stamps.
set -u
exec > >(tee -a "${LOG:-/tmp/dn-gpu.log}") 2>&1
export PYTHONUNBUFFERED=1
ROOT=$(pwd)
T0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - T0 ))s] $*"; }

stamp environment
nvidia-smi -L
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$ROOT"/.gpu/whl/*.whl || exit 1
rm -rf /tmp/dn && mkdir -p /tmp/dn && cp -r "$ROOT"/dn_cli "$ROOT"/configs "$ROOT"/scripts "$ROOT"/tests "$ROOT"/pyproject.toml /tmp/dn/
cp -r /tmp/dn/configs /tmp/dn/dn_cli/configs   # what an install would map
cp -r "$ROOT"/examples /tmp/dn/dn_cli/examples  # the sample slide, for dn bench
export PYTHONPATH=/tmp/site:/tmp/dn
cd /tmp/dn
python3 -c "import torch, pyvips, openslide; print('torch', torch.__version__, torch.cuda.get_device_name(0), '| libvips', pyvips.version(0), pyvips.version(1), '| openslide', openslide.__library_version__)" || exit 1

stamp "CycleGAN-size model (ResNet-9, ngf 64, random weights)"
python3 -c "
import torch
from dn_cli.models.resnet import ResnetGenerator
torch.manual_seed(0)
torch.save(ResnetGenerator(ngf=64, n_blocks=9).state_dict(), '/tmp/cg64.pth')"

stamp "CUDA tests"
timeout 180 python3 -m pytest -q -m cuda -p no:cacheprovider --tb=short tests 2>&1 | grep -E "^E |FAILED|passed|failed|rror" | head -40

stamp "DN layer per tile, ResNet-9 ngf 64 fp16, tiles of 512 (+32): plain vs dense forward, eager and compiled"
timeout 420 python3 scripts/bench_dn_layer.py --ngf 64 --blocks 9 --tile-size 512 --batch-size 16 --device cuda --precision fp16 --steps 8
timeout 300 python3 scripts/bench_dn_layer.py --ngf 64 --blocks 9 --tile-size 512 --batch-size 16 --device cuda --precision fp16 --steps 8 --channels-last

stamp "dn bench, 8192² tissue slide (reads, ceiling, writer, null, in, dn), eager and compiled"
timeout 420 python3 -m dn_cli bench --device cuda --model /tmp/cg64.pth --size 8192 --batch-size 16 --repeats 1 --compile on 2>&1 | grep -v "measuring"
timeout 180 python3 -m dn_cli bench --device cuda --size 8192 --batch-size 16 --repeats 1 2>&1 | grep -v "measuring"

stamp "host stages (reads, writer, null) on 1, 2, 4, 8 and 16 cores, 8192² slide: does the host keep up?"
for cores in 1 2 4 8 16; do
  echo "cores: $cores"; timeout 120 taskset -c 0-$((cores - 1)) python3 -m dn_cli bench --host-only --size 8192 --repeats 1 --json
done

stamp "16384² real-tissue slide"
python3 -c "
import sys; sys.path.insert(0, 'scripts')
from pathlib import Path
from bench_scaling import make_slide
make_slide(Path('/tmp/s16k.tif'), 16384)"

run_cli() {  # label, extra arguments...
  local label=$1; shift
  nvidia-smi dmon -s u -d 1 > "/tmp/dmon.$label" 2>/dev/null & local dm=$!
  local t=$(date +%s.%N)
  timeout 200 python3 -m dn_cli translate /tmp/s16k.tif -o "/tmp/out_$label.tif" -q --overwrite "$@"
  local rc=$?
  local dt=$(python3 -c "import time; print(round(time.time() - $t, 2))")
  kill $dm 2>/dev/null; wait $dm 2>/dev/null
  local busy=$(awk '!/^#/ && NF>2 {n++; s+=$2} END {if (n) printf "%.0f", s/n}' "/tmp/dmon.$label")
  python3 -c "print(f'  $label: exit $rc, $dt s, {16384**2 / 1e6 / $dt:.1f} Mpx/s, GPU busy ${busy:-?} %')"
}
run_cli cyclegan_in --model /tmp/cg64.pth --norm in --batch-size 16 --compile off
run_cli cyclegan_dn --model /tmp/cg64.pth --norm dn --batch-size 16 --compile off
run_cli cyclegan_dn_compiled --model /tmp/cg64.pth --norm dn --batch-size 16 --compile on
run_cli cyclegan_dn_compiled_again --model /tmp/cg64.pth --norm dn --batch-size 16 --compile on  # kernels cached
run_cli bundled_dn --norm dn --batch-size 16 --compile off

stamp "two 16384² slides: one process, then two workers on the one GPU (issue 19: --devices cuda:0,cuda:0)"
mkdir -p /tmp/pair && ln -f /tmp/s16k.tif /tmp/pair/a.tif && ln -f /tmp/s16k.tif /tmp/pair/b.tif
for devices in "--device cuda:0" "--devices cuda:0,cuda:0"; do
  t=$(date +%s.%N)
  timeout 300 python3 -m dn_cli translate /tmp/pair -o /tmp/pair_out -q --overwrite --model /tmp/cg64.pth --batch-size 16 --compile on $devices
  echo "  $devices: exit $?, $(python3 -c "import time; print(round(time.time() - $t, 1))") s for 2 × 16384²"
done
stamp done
