"""Input pipelines: corpora, pre-training instances, fine-tuning tasks."""
