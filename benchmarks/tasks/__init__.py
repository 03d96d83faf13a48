"""Task registry and the built-in tasks (one file each)."""

from benchmarks.tasks.base import (
    SPLITS,
    DataError,
    Task,
    extract_final_number,
    get_task,
    normalize_number,
    read_rows,
    register_task,
    split_holdout,
    stable_shuffle,
    tasks,
)

__all__ = [
    "SPLITS",
    "DataError",
    "Task",
    "extract_final_number",
    "get_task",
    "normalize_number",
    "read_rows",
    "register_task",
    "split_holdout",
    "stable_shuffle",
    "tasks",
]
