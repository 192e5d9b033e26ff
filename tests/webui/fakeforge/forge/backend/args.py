"""Forge keeps ``dynamic_args`` as a dict; Forge Neo as an object (the tests switch it)."""

dynamic_args = {"embedding_dir": None, "forge_unet_storage_dtype": None}
