"""What the training stages share: the training jobs, the DPO trainer's settings from a recipe, the
pairs' order and dataset, LoRA adapters, progress lines, the trained model's directory, checkpoints
and model card, and the experiment trackers."""
