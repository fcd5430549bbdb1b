"""Config sections both training products share (STGCN++ and DINO pose)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recognizer_core.config import StrictModel


class ScalingSection(StrictModel):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU when use_gpu)")
    use_gpu: bool = Field(False, description="train on GPUs (NCCL, mixed precision as train.amp says); false = "
                                             "CPU (gloo). true waits for GPU workers on a cluster (an autoscaler "
                                             "adds them), never falls back to the CPU; on a private local Ray, "
                                             "GPUs it lacks are an error")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker (include loader workers)")
    gpus_per_worker: float = Field(1.0, ge=0, description="GPUs per worker when use_gpu")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="placement group strategy of the workers")
    cpu_malloc: Literal["auto", "tcmalloc", "system"] = Field(
        "auto", description="workers' memory allocator: tcmalloc reuses freed memory where glibc page-faults "
                            "fresh pages in every step (CPU step 1.9x faster at batch 64, see docs/training.md); "
                            "auto = tcmalloc for CPU workers of a private local Ray if installed; on a cluster "
                            "say tcmalloc (every node needs the library); system = the system malloc")
    tcmalloc_path: str | None = Field(None, description="the tcmalloc library on the workers (default: the first "
                                                        "found in the usual lib folders of this machine)")

    @model_validator(mode="after")
    def _one_gpu_per_rank(self) -> "ScalingSection":
        # NCCL needs a GPU of its own per rank: two ranks given halves of one GPU (PACK places them there) fail at
        # start with "Duplicate GPU detected" (ray-project/ray#48012). Fractions suit one-worker trials sharing GPUs.
        if self.use_gpu and self.num_workers > 1 and self.gpus_per_worker < 1:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker} with num_workers={self.num_workers}: NCCL "
                             "needs a whole GPU per worker (fractions put two ranks on one GPU); use "
                             "gpus_per_worker >= 1, or fractions with num_workers=1 (trials sharing a GPU)")
        return self
