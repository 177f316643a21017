"""The ``warren`` command line: admin commands over gRPC, and the daemons' entry points."""

import os

# gRPC core logs to stderr below ERROR by default (e.g. a failed TLS handshake),
# which would break the CLI's one-line errors. Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
