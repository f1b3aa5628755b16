"""LLM runtime: sequences, paged-KV block manager, continuous-batching scheduler, sampler,
incremental detokenizer, the engine loop and its front ends (`LLM`, `AsyncLLM`).

Importing this package loads no model backend: a runner (runner.py; onnxruntime for cpu
targets) is opened when an `LLM` or `AsyncLLM` opens a bundle.
"""

from ingot.plans.llm import blocks_needed
from ingot.runtime.llm.async_llm import AsyncLLM, EngineDeadError
from ingot.runtime.llm.block_manager import Block, BlockManager, hash_block
from ingot.runtime.llm.detokenizer import IncrementalDetokenizer
from ingot.runtime.llm.engine import KVCacheReport, LLMEngine
from ingot.runtime.llm.errors import PromptTooLongError, QueueFullError
from ingot.runtime.llm.llm import LLM
from ingot.runtime.llm.outputs import Logprob, RequestMetrics, RequestOutput, TokenLogprobs
from ingot.runtime.llm.runner import Runner, RunnerMemory, load_runner
from ingot.runtime.llm.sampling import Sampler, SamplingParams
from ingot.runtime.llm.scheduler import Scheduler, SchedulerConfig
from ingot.runtime.llm.scheduler_output import ScheduledSequence, SchedulerOutput, SchedulerStats, StepResult
from ingot.runtime.llm.sequence import FinishReason, Sequence, SequenceStatus

__all__ = [
    "LLM", "AsyncLLM", "Block", "BlockManager", "EngineDeadError", "FinishReason",
    "IncrementalDetokenizer", "KVCacheReport", "LLMEngine", "Logprob", "PromptTooLongError", "QueueFullError",
    "RequestMetrics", "RequestOutput", "Runner", "RunnerMemory", "Sampler", "SamplingParams", "ScheduledSequence",
    "Scheduler", "SchedulerConfig", "SchedulerOutput", "SchedulerStats", "Sequence", "SequenceStatus", "StepResult",
    "TokenLogprobs", "blocks_needed", "hash_block", "load_runner",
]
