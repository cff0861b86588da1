"""ivtrain: the lean pretraining trainer (recipes -> shards -> objective -> DeepSpeed engine).

It never imports ivdata: the only contract with the data engine is the shard format
described in docs/ARCHITECTURE.md.
"""
