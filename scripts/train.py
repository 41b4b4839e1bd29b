"""Train a model (default: the captioner on the embedded synthetic dataset), then test it."""
from captioner.cli import train_main

if __name__ == "__main__":
    train_main()
