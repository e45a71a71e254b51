"""Structured pruning of the project's own MLP and CNN: baselines, masks, strategies, the physical pass."""
