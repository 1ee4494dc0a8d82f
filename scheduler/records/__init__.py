"""The scheduler's records and the only code that changes them, in a room of their own.

`tables` holds the records as data (jobs, tasks, executors, the pending queues); `books`
holds `Records`, the bookkeeping on them. The core decides; the records act.
"""

from tidal.scheduler.records.books import MAX_LOST_EXECUTORS, Records
from tidal.scheduler.records.spans import SpanSubtasks, task_ids
from tidal.scheduler.records.tables import (
    PRIORITIES,
    SLOT_STATES,
    ExecutorRecord,
    Job,
    PendingQueues,
    Task,
    TaskState,
    resume_order,
    stat_count,
)

__all__ = [
    "MAX_LOST_EXECUTORS",
    "PRIORITIES",
    "SLOT_STATES",
    "ExecutorRecord",
    "Job",
    "PendingQueues",
    "Records",
    "SpanSubtasks",
    "Task",
    "TaskState",
    "resume_order",
    "stat_count",
    "task_ids",
]
