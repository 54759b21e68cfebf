"""SD4Match prompt training: the loss, the trainer (checkpoint steps, resume) and its CLI."""
