"""Model loading: a Hugging Face hub id or local folder to a loaded model, its tokenizer and its
family's adapter (:mod:`.loading`); telling sources apart without the network (:mod:`.hub`).  No
Dagster import; the Dagster resource is :class:`oe_assets.resources.model.ModelResource`."""
