"""The query path shared by every entry point (HTTP routes, `ragd search` / `ask`, `ragd eval`):
plan -> rewrite -> retrieve -> fuse -> boost -> rerank -> threshold -> expand -> answer."""
