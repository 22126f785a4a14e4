"""loretune: fandom lore in, fine-tuned and evaluated chat model out."""
