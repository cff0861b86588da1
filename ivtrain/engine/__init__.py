"""The training engine, in small parts that know nothing about stages:
  loop.py             set-up (bad input reported before DeepSpeed starts), steps, SIGTERM, export
  checkpoint.py       DeepSpeed checkpoints + per-rank state; exact resume on the same or another world size
  deepspeed_setup.py  DeepSpeed's config, and mends for two faults of DeepSpeed 0.19
  distributed.py      the process group; rank, world size and an exact-gradient all-gather for objectives
  metrics.py          console, metrics.jsonl, TensorBoard, FLOP/s, MFU, memory
"""
from ivtrain.engine.checkpoint import convert_to_universal, position_from_batch_number, wait_for_conversion
from ivtrain.engine.deepspeed_setup import ResumeError, deepspeed_config, undo_initialization_step
from ivtrain.engine.distributed import DistContext, setup_distributed
from ivtrain.engine.loop import SetupError, Trainer, train

__all__ = ["DistContext", "ResumeError", "SetupError", "Trainer", "convert_to_universal", "deepspeed_config",
           "position_from_batch_number", "setup_distributed", "train", "undo_initialization_step",
           "wait_for_conversion"]
