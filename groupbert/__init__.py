"""GroupBERT / BERT / GPT-2 pretraining and fine-tuning on IPU, CUDA and CPU."""
