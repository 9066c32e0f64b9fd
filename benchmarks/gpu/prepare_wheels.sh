#!/usr/bin/env bash
# Run HERE (a machine with the package registries) before using a lent GPU machine: that machine has torch,
# timm, transformers, tokenizers, rich, pyyaml, tensorboard and safetensors, but no registry, no DeepSpeed and no
# webdataset. This puts the missing wheels (CPython 3.12, x86-64, as that machine runs) into .whl/, which git
# ignores and the device tool carries (`carry: [".whl"]`, ~5 MiB). DeepSpeed ships only a source archive; its
# wheel is built here (pure Python: its CUDA ops are JIT-built on first use there, FusedAdam included).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions webdataset braceexpand
"$PY" -m pip wheel -q --no-deps -w .whl "deepspeed==$("$PY" -c 'import importlib.metadata as m; print(m.version("deepspeed"))' 2>/dev/null || echo 0.19.8)"
ls -1 .whl
du -sh .whl
