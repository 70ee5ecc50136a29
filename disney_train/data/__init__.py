"""The data path: dataset folders, packing into shards, and the training input."""
