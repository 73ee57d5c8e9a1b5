"""Where samples and descriptions come from: text files (CSV / JSONL / Parquet), Hugging Face
``datasets``, CIFAR archives, and the vocabulary files of the sparse codes.  No Dagster import; the
Dagster resource over them is :class:`oe_assets.resources.datasets.DatasetResource`."""
