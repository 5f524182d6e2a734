"""Which system runs an arm: the one dispatch from an `ArmConfig` to its `Arm`.

Apart from evals/arms.py so that arm kinds living in their own modules (tuned-policy,
tuned-generator) can build on `evals.arms` without an import cycle. Adding an arm kind: its
config class in the `ArmConfig` union (evals/config.py), its system in its own module, and one
branch here.
"""

from __future__ import annotations

from typing import Any, cast

from agent.settings import Settings
from evals.arms import (
    AgentSystem,
    Arm,
    ImportedSystem,
    PlainSystem,
    RewriteSystem,
    arm_settings,
)
from evals.config import ArmConfig, ImportedArm, PlainArm, RewriteArm, TunedPolicyArm
from evals.services import SharedServices
from evals.suites import Suite


def build_arm(
    config: ArmConfig,
    base: Settings,
    shared: SharedServices,
    checkpointer: Any,
    suites: list[Suite],
    seeds: list[int],
) -> Arm:
    if config.generator_lora or config.kind == "tuned-generator":
        from evals.arms_tuned_generator import build_tuned

        return cast(Arm, build_tuned(config, base, shared, checkpointer, suites, seeds, build_arm))
    if isinstance(config, ImportedArm):
        return ImportedSystem(config, shared, suites, seeds)
    if isinstance(config, TunedPolicyArm):
        from evals.arms_tuned_policy import TunedPolicySystem

        return TunedPolicySystem(config, base, shared, checkpointer)
    settings = arm_settings(config, base)
    if isinstance(config, PlainArm):
        return PlainSystem(config, settings, shared)
    if isinstance(config, RewriteArm):
        return RewriteSystem(config, settings, shared)
    return AgentSystem(config, settings, shared, checkpointer)
