"""The ``warren`` command line: admin commands over gRPC, and the daemons' entry points."""
