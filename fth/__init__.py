"""fth: fine-tuned heads on a self-supervised livestream frame encoder."""
