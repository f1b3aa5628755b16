"""What TensorRT gets for an sm target: the ONNX graph and the profile of its inputs. Pure.

- A dense plan: the plan graph as the cpu targets have it (fp32, Q/DQ as quantized), one profile
  from the manifest's dim ranges.
- A paged LLM plan: the plan graph with each attention lowering put back to its
  ingot.PagedAttention node (paged_graph) and that node made the plugin node (plugin_nodes:
  fp16 attention and pool), one profile from the `llm` limits (profiles).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ingot.builder.trt.paged_graph import unlowered
from ingot.builder.trt.plugin_nodes import plugin_graph
from ingot.builder.trt.profiles import ProfileShape, dense_profiles, max_num_blocks, paged_profiles
from ingot.plans import TensorSpec
from ingot.plans.llm import LLMInfo

KV_DTYPE = "float16"  # the pool of an sm plan (plugin_nodes.POOL_DTYPE)
ATTENTION = "trt-plugin:ingot::PagedAttention"  # build_options["attention"] of a paged sm target


@dataclass
class SmGraph:
    model: onnx.ModelProto
    profiles: list[ProfileShape]
    llm: LLMInfo | None

    @property
    def plugins(self) -> bool:
        return self.llm is not None

    def build_options(self) -> dict:
        """What the runtime needs to know of the graph, beyond the manifest's `llm`."""
        if self.llm is None:
            return {}
        return {"attention": ATTENTION, "kv_dtype": KV_DTYPE, "max_num_blocks": max_num_blocks(self.llm)}


def sm_graph(plan: onnx.ModelProto, inputs: list[TensorSpec], contract: onnx.ModelProto | None = None,
             llm: LLMInfo | None = None) -> SmGraph:
    """`plan`: the graph the cpu targets compile; `contract`: the paged export before its cpu lowering."""
    if llm is None:
        return SmGraph(plan, dense_profiles(inputs), None)
    assert contract is not None, "a paged plan's sm target needs the contract graph"
    return SmGraph(plugin_graph(unlowered(plan, contract)), paged_profiles(llm), llm)
