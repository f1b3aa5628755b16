"""LLM runtime: sequences, paged-KV block manager, continuous-batching scheduler, sampler,
incremental detokenizer, the engine loop and its front ends (`LLM`, `AsyncLLM`).

Importing this package loads no model backend: the model runner (onnxruntime) is
imported when an `LLM` or `AsyncLLM` opens a bundle.
"""

from ingot.runtime.llm.async_llm import AsyncLLM, EngineDeadError
from ingot.runtime.llm.block_manager import Block, BlockManager, hash_block
from ingot.runtime.llm.detokenizer import IncrementalDetokenizer
from ingot.runtime.llm.engine import EngineStats, KVCacheReport, LLMEngine
from ingot.runtime.llm.errors import PromptTooLongError, QueueFullError
from ingot.runtime.llm.llm import LLM
from ingot.runtime.llm.outputs import RequestMetrics, RequestOutput
from ingot.runtime.llm.sampling import Sampler, SamplingParams
from ingot.runtime.llm.scheduler import Scheduler, SchedulerConfig
from ingot.runtime.llm.scheduler_output import ScheduledSequence, SchedulerOutput, SchedulerStats, StepResult
from ingot.runtime.llm.sequence import FinishReason, Sequence, SequenceStatus, blocks_needed

__all__ = [
    "LLM", "AsyncLLM", "Block", "BlockManager", "EngineDeadError", "EngineStats", "FinishReason",
    "IncrementalDetokenizer", "KVCacheReport", "LLMEngine", "PromptTooLongError", "QueueFullError",
    "RequestMetrics", "RequestOutput", "Sampler", "SamplingParams", "ScheduledSequence", "Scheduler",
    "SchedulerConfig", "SchedulerOutput", "SchedulerStats", "Sequence", "SequenceStatus", "StepResult",
    "blocks_needed", "hash_block",
]
