"""LLM runtime core: sequences, paged-KV block manager, continuous-batching scheduler,
sampler and incremental detokenizer. Pure Python + numpy; no model execution here."""

from ingot.runtime.llm.block_manager import Block, BlockManager, hash_block
from ingot.runtime.llm.detokenizer import IncrementalDetokenizer
from ingot.runtime.llm.errors import PromptTooLongError, QueueFullError
from ingot.runtime.llm.sampling import Sampler, SamplingParams
from ingot.runtime.llm.scheduler import Scheduler, SchedulerConfig
from ingot.runtime.llm.scheduler_output import ScheduledSequence, SchedulerOutput, SchedulerStats, StepResult
from ingot.runtime.llm.sequence import FinishReason, Sequence, SequenceStatus, blocks_needed

__all__ = [
    "Block", "BlockManager", "FinishReason", "IncrementalDetokenizer", "PromptTooLongError", "QueueFullError",
    "Sampler", "SamplingParams", "ScheduledSequence", "Scheduler", "SchedulerConfig", "SchedulerOutput",
    "SchedulerStats", "Sequence", "SequenceStatus", "StepResult", "blocks_needed", "hash_block",
]
