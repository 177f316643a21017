"""Worker agent: runtime, executors, local cache, manager session."""
