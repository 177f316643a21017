"""The node: the one place that runs a manager, a worker, or both in one process.

``warren.manager`` and ``warren.agent`` are sibling libraries that never import
each other; this package composes them. It holds the node's options
(``options``), what a node keeps about itself (``state``), the join client
(``join``), role keeping for promote and demote (``roles``), the daemons
(``daemon``), and what the daemon commands of the CLI start (``launch``).
"""
