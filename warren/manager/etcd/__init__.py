"""Warren's replicated log on etcd: the member each manager runs, and the consensus over it."""
