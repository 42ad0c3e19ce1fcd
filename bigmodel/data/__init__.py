"""Raw text → cleaned documents → tokenizer → memory-mapped token shards → batches."""
