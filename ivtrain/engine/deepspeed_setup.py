"""DeepSpeed's configuration for a run, and mends for two faults of DeepSpeed 0.19 that change what it computes."""
from __future__ import annotations

from pathlib import Path

import torch


class ResumeError(RuntimeError):
    """The checkpoint in out_dir cannot be continued exactly by this run (other data order, broken checkpoint)."""


def deepspeed_config(micro_batch: int, grad_accum: int, world: int, clip_grad: float, zero_stage: int, bf16: bool,
                     load_universal: bool = False) -> dict:
    return {
        "checkpoint": {"load_universal": load_universal},
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world,
        "gradient_clipping": clip_grad,
        "zero_optimization": {"stage": zero_stage},
        # bf16 weights, activations and gradients; DeepSpeed keeps fp32 master weights for the optimizer
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
    }


def recipe_deepspeed_config(recipe, world: int, load_universal: bool = False) -> dict:
    t = recipe.train
    return deepspeed_config(recipe.data.batch_size, t.grad_accum, world, recipe.optim.clip_grad, t.zero_stage, t.bf16,
                            load_universal)


def mend_zero3_universal_load(optimizer: torch.optim.Optimizer, universal_tag_dir: Path) -> None:
    """Undo two faults of DeepSpeed's (0.19) ZeRO-3 universal load with several parameter groups (we have two or
    more: weight decay on or off, and layer-wise lr scales). It gives every group the first group's
    hyperparameters, and it hands every group's state one shared `step` tensor, which AdamW then increments
    once per group per step, so the later groups' bias correction runs ahead. Measured on a two-group model:
    the biases drift by 1e-4 in the first step after the load; with the mend, the losses are those of the
    uninterrupted run."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    with torch.serialization.safe_globals([ZeroStageEnum, LossScaler]):  # the two classes DeepSpeed pickles there
        saved = torch.load(universal_tag_dir / "zero" / "optimizer_state.pt", weights_only=True)
    groups = saved["optimizer_state_dict"]["param_groups"]
    if len(groups) != len(optimizer.param_groups):
        raise ResumeError(f"{universal_tag_dir} holds {len(groups)} optimizer parameter groups, this run "
                          f"{len(optimizer.param_groups)}")
    for group, want in zip(optimizer.param_groups, groups):
        group.update({k: v for k, v in want.items() if k != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def undo_initialization_step(optimizer) -> None:
    """DeepSpeed's (0.19) wrapper for bf16 without ZeRO, FP16_UnfusedOptimizer, runs one AdamW step on zero
    gradients when it is built, to allocate the optimizer state. That step is not inert: AdamW decays the fp32
    master weights once (by lr x weight_decay) and counts it, so every later update uses the bias correction of
    one step further on; the first real update comes out 0.74x the size it should be. Measured on the tiny
    stage-1 recipe: the losses ran up to 4.4 % off fp32 within 6 steps, against 0.6 % for ZeRO 1, whose optimizer
    no longer takes that step. Undone here: the inner optimizer's state is cleared (AdamW builds it afresh on the
    first real step) and the masters are copied back from the bf16 weights they were cloned from, exactly."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return
    optimizer.optimizer.state.clear()
    with torch.no_grad():
        for masters, weights in zip(optimizer.fp32_groups, optimizer.fp16_groups):
            for master, weight in zip(masters, weights):
                master.copy_(weight)
