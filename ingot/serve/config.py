"""`REPO/<model>/config.json` (or `.yaml`): how one model is served, validated with pydantic.

    {"version_policy": {"latest": {"num_versions": 2}},     # or {"all": {}}, {"specific": {"versions": [1, 3]}}
     "max_queue_size": 128, "default_timeout_s": 30,
     "dynamic_batching": {"max_batch_size": 32, "max_queue_delay_us": 2000},   # non-LLM models
     "llm": {"kv_cache_memory": "1GiB", "max_num_tokens": 768, "max_num_seqs": 16}}

Names follow Triton's config.pbtxt where one exists (`version_policy`, `max_queue_size`,
`max_queue_delay_microseconds` → `max_queue_delay_us`).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ingot.serve.errors import ServeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latest(_Strict):
    num_versions: int = Field(1, ge=1)


class Specific(_Strict):
    versions: list[int] = Field(min_length=1)


class VersionPolicy(_Strict):
    """Exactly one of latest / all / specific (Triton's ModelVersionPolicy); default latest 1."""

    latest: Latest | None = None
    all: dict | None = None
    specific: Specific | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"version_policy takes one of latest, all, specific; got {', '.join(chosen)}")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve, ascending."""
        available = sorted(available)
        if self.all is not None:
            return available
        if self.specific is not None:
            return [v for v in available if v in set(self.specific.versions)]
        n = self.latest.num_versions if self.latest is not None else 1
        return available[-n:]


class DynamicBatching(_Strict):
    """Merge concurrent requests into one plan call (models other than causal LMs)."""

    max_batch_size: int | None = Field(None, ge=1, description="default: the plan's largest batch")
    max_queue_delay_us: int = Field(1000, ge=0, description="how long a request may wait for others")


class LLMOptions(_Strict):
    kv_cache_memory: str | float | None = None  # bytes (2e9, 512MiB) or a fraction of RAM (0.25)
    max_num_tokens: int | None = Field(None, ge=1)  # token budget of a step
    max_num_seqs: int | None = Field(None, ge=1)  # sequences in flight, at most the plan's


class ServeConfig(_Strict):
    version_policy: VersionPolicy = VersionPolicy()
    max_queue_size: int = Field(1024, ge=1, description="requests waiting per model; more get RESOURCE_EXHAUSTED")
    default_timeout_s: float | None = Field(None, gt=0, description="a request's deadline unless it sets one")
    dynamic_batching: DynamicBatching | None = DynamicBatching()  # null: each request runs alone
    llm: LLMOptions = LLMOptions()


def read_config(model_dir: Path) -> ServeConfig:
    """The model folder's config.json / config.yaml, or the defaults; raises ServeError."""
    found = [p for p in (model_dir / "config.json", model_dir / "config.yaml", model_dir / "config.yml") if p.is_file()]
    if not found:
        return ServeConfig()
    if len(found) > 1:
        raise ServeError(f"{model_dir}: more than one config file ({', '.join(p.name for p in found)})")
    path = found[0]
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            import yaml

            try:
                data = yaml.safe_load(path.read_text())
            except yaml.YAMLError as e:
                raise ValueError(str(e).replace("\n", " ")) from e
        return ServeConfig.model_validate(data or {})
    except (ValueError, OSError) as e:  # json, yaml and pydantic errors are ValueErrors
        raise ServeError(f"{path}: {_first_error(e)}") from e


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"{where}: {err['msg']}" if where else err["msg"]
    return str(e).splitlines()[0]
