"""What the training stages share: the DPO trainer's settings from a recipe, LoRA adapters, the
trained model's directory and checkpoints, and the experiment trackers."""
