"""The containerd runtime: Warren's ``Runtime`` over containerd 1.6's gRPC API.

``runtime.ContainerdRuntime`` is the entry point; the other modules each wrap
one containerd service (content, snapshots, tasks...) or one concern (the OCI
spec, image unpacking, output capture, exit events).
"""
