#!/usr/bin/env bash
# Regenerate the containerd API stubs from the .proto files beside this script,
# with mypy-protobuf's typed .pyi stubs beside them (commit the output). Run from
# anywhere; paths are relative to the repo root so the generated imports read
# `from warren.agent.containerd.proto import ...`.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
.venv/bin/python -m grpc_tools.protoc -I. \
  --plugin=protoc-gen-mypy=.venv/bin/protoc-gen-mypy \
  --plugin=protoc-gen-mypy_grpc=.venv/bin/protoc-gen-mypy_grpc \
  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
  warren/agent/containerd/proto/*.proto
# Messages-only files get an empty *_pb2_grpc.py (and .pyi); drop those.
for f in warren/agent/containerd/proto/*_pb2_grpc.py; do
  grep -q "^class " "$f" || rm "$f" "${f}i"
done
