"""The task registry: `TASKS` maps a name to its `Task` class; each built-in task is one module here.

    people_count   counts, Poisson NLL, MAE vs the median          depth         log-depth maps, AbsRel
    time_of_day    (sin, cos) of the clock, circular MAE           segmentation  class maps, mIoU
    detection      boxes from the token grid (centre heatmap)

Adding a task: subclass `heads.tasks.base.Task`, decorate it with `register_task`, and import its module (built-ins
are imported below; a test module can register its own).
"""

from heads.tasks.base import TASKS, LabelContext, Task, TaskConfig, make_task, register_task
from heads.tasks.depth import Depth
from heads.tasks.detection import Detection
from heads.tasks.people_count import PeopleCount
from heads.tasks.segmentation import Segmentation
from heads.tasks.time_of_day import TimeOfDay, format_time, parse_time_of_day

__all__ = [
    "TASKS", "LabelContext", "Task", "TaskConfig", "make_task", "register_task",
    "PeopleCount", "TimeOfDay", "Depth", "Segmentation", "Detection", "format_time", "parse_time_of_day",
]  # fmt: skip
