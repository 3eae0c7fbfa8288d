"""Tasks: the JSONL example format, its reader/writer, and the task generators."""

from rlf.tasks.schema import Example, read_jsonl, target_token_id, write_jsonl

__all__ = ["Example", "read_jsonl", "write_jsonl", "target_token_id"]
