"""Launchers: the local main job, sbatch scripts, local launch helpers (no hyperparameters)."""
