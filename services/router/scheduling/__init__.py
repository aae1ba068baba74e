"""Endpoint scheduling for the router: filters -> weighted scorers -> picker, in named profiles
chosen per SLO class or agent type, built from YAML through a plugin registry (after llm-d's
endpoint picker). Pure and synchronous: it runs on the hot path of every request.

    scheduler = Scheduler.from_yaml()            # the packaged profiles.yaml
    decision = scheduler.pick(request, candidates)
    if decision.ok:
        scheduler.record(decision.endpoint, request); scheduler.acquire(decision.endpoint)
        ...  # dispatch; scheduler.observe_ttft(...); finally scheduler.release(...)
    elif decision.outcome is Outcome.SATURATED: ...  # flow control
    else: ...                                         # NO_READY -> UNAVAILABLE
"""

from services.router.scheduling.builtin import REGISTRY
from services.router.scheduling.memory import MemoryConfig, SchedulerMemory
from services.router.scheduling.profiles import (
    DEFAULT_PROFILES_PATH,
    Profile,
    ProfileSelector,
    SchedulerConfig,
    load_config,
    parse_config,
)
from services.router.scheduling.registry import (
    Filter,
    Picker,
    PluginRegistry,
    Scorer,
    scheduler_registry,
)
from services.router.scheduling.scheduler import Scheduler
from services.router.scheduling.types import (
    BATCH,
    INTERACTIVE,
    REALTIME,
    SLO_CLASSES,
    Candidate,
    Decision,
    Outcome,
    SchedulingRequest,
    chained_block_hashes,
    text_block_hashes,
)

__all__ = [
    "BATCH",
    "DEFAULT_PROFILES_PATH",
    "INTERACTIVE",
    "REALTIME",
    "REGISTRY",
    "SLO_CLASSES",
    "Candidate",
    "Decision",
    "Filter",
    "MemoryConfig",
    "Outcome",
    "Picker",
    "PluginRegistry",
    "Profile",
    "ProfileSelector",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerMemory",
    "SchedulingRequest",
    "Scorer",
    "chained_block_hashes",
    "load_config",
    "parse_config",
    "scheduler_registry",
    "text_block_hashes",
]
