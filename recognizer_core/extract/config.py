"""Typed config of the extraction job (stages 1 + 2: `ExtractionConfig`; tracking options in track/config.py).

Field names follow the training guide's `models.pose_estimation` section (inference_mode, onnx.*, tensorrt.*,
score_threshold, nms_threshold, keypoint_threshold, max_detections) so its YAML values carry over.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recognizer_core.config import StrictModel
from recognizer_core.track.config import TrackingConfig

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts")


class SourceConfig(StrictModel):
    input: str = Field("", description="folder or pyarrow filesystem URI (local path, s3://, gs://) of videos")
    manifest_csv: str = Field("", description="CSV with columns path,label[,split] (paths relative to input "
                              "when set, else to the CSV's folder, or absolute/URIs); labels then come from it")
    extensions: list[str] = Field(list(VIDEO_EXTENSIONS), description="video file extensions to pick up")
    label_names: list[str] = Field([], description="class names in label-index order; empty = sorted names found")
    split_names: list[str] = Field(["train", "val", "test"], description="folder names read as the split "
                                                                          "(RWF-2000 layout train/Fight/x.avi)")
    limit: int = Field(0, ge=0, description="process at most this many videos (0 = all); for smoke runs")


class DecodeConfig(StrictModel):
    frame_stride: int = Field(1, ge=1, description="keep every n-th frame")
    target_fps: float = Field(0.0, ge=0.0, description="if > 0, overrides frame_stride with round(fps / target_fps)")
    shard_frames: int = Field(600, ge=1, description="frames per decode shard: long videos are split so one file "
                                                     "does not serialise the job (tracking stays continuous)")
    frames_per_block: int = Field(16, ge=1, description="frames per Ray Data block out of a decode task")
    backend: Literal["pyav", "opencv"] = Field("pyav", description="decoder (opencv is tried when PyAV fails)")
    keep_truncated: bool = Field(True, description="keep a video that decodes fewer frames than its header "
                                                   "declares (recorded `truncated` either way); false = failed")
    truncation_tolerance: float = Field(0.1, ge=0, lt=1, description="a video is truncated when it decodes "
                                        "fewer than (1 - this) x the declared frames (headers are estimates)")


class OnnxOptions(StrictModel):
    model_path: str = Field("", description="RTMO end2end ONNX file (mmdeploy / rtmlib export)")
    device: str = Field("cpu", description="cpu | cuda | cuda:N; cuda fails loudly if the CUDA provider is missing")
    execution_mode: Literal["ORT_SEQUENTIAL", "ORT_PARALLEL"] = "ORT_SEQUENTIAL"
    graph_optimization_level: Literal["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED",
                                      "ORT_ENABLE_ALL"] = "ORT_ENABLE_ALL"
    enable_mem_pattern: bool = True
    enable_cpu_mem_arena: bool = True
    intra_op_num_threads: int = Field(0, ge=0, description="0 = ONNX Runtime default (all cores)")
    gpu_mem_limit_gb: float = Field(8.0, gt=0, description="CUDA provider arena limit")
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    tunable_op_enable: bool = False
    tunable_op_tuning_enable: bool = False


class TensorRTOptions(StrictModel):
    model_path: str = Field("", description="serialized TensorRT engine (rayjobs/build_trt_engine.py)")
    device: str = Field("cuda:0", description="CUDA device of the engine")
    fp16_mode: bool = Field(False, description="used when building the engine")


class PoseModelConfig(StrictModel):
    inference_mode: Literal["onnx", "tensorrt"] = "onnx"
    onnx: OnnxOptions = OnnxOptions()
    tensorrt: TensorRTOptions = TensorRTOptions()
    model_input_size: tuple[int, int] = Field((640, 640), description="(height, width) of the model input")
    score_threshold: float = Field(0.3, ge=0, le=1, description="person detection score threshold")
    nms_threshold: float = Field(0.45, ge=0, le=1, description="IoU above which a lower-score box is dropped")
    keypoint_threshold: float = Field(0.3, ge=0, le=1, description="keypoint scores below this are set to 0")
    max_detections: int = Field(100, ge=1, description="persons kept per frame after NMS")
    batch_size: int = Field(8, ge=1, description="frames per inference call (1 when the model has a static batch)")


class RayResources(StrictModel):
    num_actors: int = Field(1, ge=1, description="inference actors kept at least (one model copy each)")
    max_actors: int = Field(0, ge=0, description="autoscale the actor pool up to this many; 0 = one per "
                            "num_gpus_per_actor of the cluster's GPUs at start (never below num_actors), or no "
                            "bound when it has none yet (scale-from-zero: the autoscaler adds GPU nodes)")
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per inference actor (fractions share a GPU)")
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_cpus_per_decode_task: float = Field(1.0, gt=0)
    # Ray reserves this per task when it places decode tasks on a node. A decode worker's own memory (USS, as
    # Ray Data reports it after a run) measured 480-590 MiB on the shared videos (up to 1080p), over the former
    # 512 MiB: a node packed with decode tasks could run out of memory, and Ray Data printed a "set memory=..."
    # warning after every run. 1 GiB covers that with Ray's suggested 25% headroom, and some for larger frames.
    decode_task_memory_mb: int = Field(1024, ge=1, description="memory reserved per decode task; also keeps "
                                       "decoding in its own CPU tasks (Ray Data fuses same-resource maps "
                                       "into the inference actors otherwise)")
    num_cpus_per_track_task: float = Field(1.0, gt=0, description="CPUs of each per-video tracking + write task")
    max_videos_in_flight: int = Field(0, ge=0, description="tracking tasks queued at once before the driver "
                                      "waits; 0 = 2 x the cluster's CPUs")
    address: str = Field("", description="Ray address; empty = $RAY_ADDRESS or a private local Ray")


class ExtractionConfig(StrictModel):
    """Stage 1 + 2: videos -> RTMO poses -> tracked per-video skeleton files."""

    source: SourceConfig = SourceConfig()
    output: str = Field("outputs/poses", description="output folder: a shared (NFS) path or an object-store URI "
                                                      "(s3://, gs://) on a cluster; relative = from the driver's cwd")
    decode: DecodeConfig = DecodeConfig()
    model: PoseModelConfig = PoseModelConfig()
    tracking: TrackingConfig = TrackingConfig()
    ray: RayResources = RayResources()
    retry_failed: bool = Field(False, description="re-run videos recorded in failures.jsonl")

    @model_validator(mode="after")
    def _check_source(self) -> "ExtractionConfig":
        if not self.source.input and not self.source.manifest_csv:
            raise ValueError("source.input or source.manifest_csv must be set")
        return self
