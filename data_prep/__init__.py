"""Public video-language datasets -> WebDataset shards.

One converter per public dataset (`howto100m`, `tvr`, `didemo`, `how2r`, `how2qa`,
`msrvtt`, `activitynet`), the shard schema (`schema`) shared with the loader, and a synthetic corpus
in the real public formats (`synthetic`). No DeepSpeed or MLflow here.
"""
