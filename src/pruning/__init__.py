"""Structured pruning: greedy CKA engines, baselines, masks and strategies."""

from src.pruning.greedy import channel_groups, greedy_cka

__all__ = ["greedy_cka", "channel_groups"]
