"""Finetuning recipes (TVR, DiDeMo, How2R, MSR-VTT, ActivityNet) and benchmark evaluation."""
