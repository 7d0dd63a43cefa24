"""Adapters to trainers: the Lightning callback and the Hugging Face Trainer callback."""
