"""Generated stubs for the parts of containerd's gRPC API Warren uses (see generate.sh)."""
