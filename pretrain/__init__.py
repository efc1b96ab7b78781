"""Pretraining library: model, objectives, loader, DeepSpeed runtime, tracking, checkpoints.

Imports flow one way: data_prep <- pretrain <- finetune.
"""
