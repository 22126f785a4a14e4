#!/usr/bin/env bash
# Packs what the GPU machine lacks into .gpu/ (git-ignored) for bench/gpu_check.sh: the packages as
# one unpacked site folder (unsloth without its 82 MB web "studio", bitsandbytes with only the CUDA 13.0
# library, which that machine's torch uses), a store's dataset, features and SmolLM2 tokenizer, and
# SmolLM2's GGUF in two parts, since one call carries at most 64 MiB.
#
#   bash bench/gpu_pack.sh STORE        STORE: a store a `loretune run --offline` filled (default model)
set -eu
STORE=${1:?usage: bench/gpu_pack.sh STORE}
PY=${PY:-.venv/bin/python}
WHEELS=.loretune/gpu-wheels
# unsloth 2026.10.9 pins transformers <= 5.17, trl <= 1.15, datasets < 5; TRL 1.15 wants datasets >= 4.7.
PACKAGES="unsloth==2026.10.9 unsloth_zoo==2026.10.9 bitsandbytes==0.50.2 trl==1.15.0 datasets==4.8.5
  peft==0.21.2 dill==0.4.1 multiprocess==0.70.19 torchao==0.18.0 cut_cross_entropy==25.1.1 msgspec==0.23.0
  tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 shtab==1.13.0 json5==0.17.3 nest_asyncio==1.6.0
  structlog==26.1.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 typing_inspection==0.4.5
  typing_extensions==4.16.0 gguf==0.19.0"
mkdir -p $WHEELS .gpu/data
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d $WHEELS $PACKAGES
site=$(mktemp -d)
for w in $WHEELS/*.whl; do unzip -q -o "$w" -d "$site"; done
rm -rf "$site/studio"; find "$site/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130*' -delete
tar czf .gpu/site.tgz -C "$site" . && rm -rf "$site"

model=$(ls -d "$STORE"/model/*/ | head -1)
rm -rf .gpu/data/dataset .gpu/data/tokenizer && mkdir -p .gpu/data/tokenizer
cp -r "$(ls -d "$STORE"/dataset/*/ | head -1)" .gpu/data/dataset
cp "$(ls "$STORE"/features/*/features.parquet | head -1)" .gpu/data/features.parquet
for f in tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json loretune_chat.json; do
    cp "$model/$f" .gpu/data/tokenizer/
done
gguf=$($PY -c "from loretune.model.base_models import packaged_file; print(packaged_file('smollm2-135m-instruct')[2])")
head -c 36M "$gguf" > .gpu/gguf.a && tail -c +$((36 * 1024 * 1024 + 1)) "$gguf" > .gpu/gguf.b
sha256sum "$gguf"
du -sh .gpu/*
