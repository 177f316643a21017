#!/usr/bin/env bash
# Regenerate the containerd API stubs from the .proto files beside this script
# (commit the output). Run from anywhere; paths are relative to the repo root so
# the generated imports read `from warren.agent.containerd.proto import ...`.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. \
  warren/agent/containerd/proto/*.proto
# Messages-only files get an empty *_pb2_grpc.py; drop those.
for f in warren/agent/containerd/proto/*_pb2_grpc.py; do
  grep -q "^class " "$f" || rm "$f"
done
