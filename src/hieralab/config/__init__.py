"""Run configuration: dataclass schemas, YAML presets and ``key=value`` overrides.

Defaults (the dataclasses) <- a YAML preset (``presets/*.yaml`` by name, or a path) <- ``key=value`` overrides; every
value is checked before anything is built, and the resolved config is written into the run folder so a run can
always be repeated.
"""

from .schema import (PRESETS, ActionConfig, ActionDataConfig, AugConfig, DataConfig, DenseDataConfig, DetectConfig,
                     FinetuneConfig, LinprobeConfig, OptimConfig, PretrainConfig, RunConfig, SegmentConfig,
                     apply_overrides, check, from_dict, load_config, preset_names, preset_summary, preset_task, to_dict,
                     trajectory_changes, validate)

__all__ = ["PRESETS", "ActionConfig", "ActionDataConfig", "AugConfig", "DataConfig", "DenseDataConfig", "DetectConfig",
           "FinetuneConfig", "LinprobeConfig", "OptimConfig", "PretrainConfig", "RunConfig", "SegmentConfig",
           "apply_overrides", "check", "from_dict", "load_config", "preset_names", "preset_summary", "preset_task",
           "to_dict", "trajectory_changes", "validate"]
