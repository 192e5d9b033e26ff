"""reForge / Forge Classic keep the same manager under ldm_patched (ComfyUI's model_management)."""

current_loaded_models = []
calls = []


class LoadedModel:
    def __init__(self, model):
        self.model = model
        self.device = model.load_device

    def model_unload(self):
        self.model.model.to(self.model.offload_device)


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None):
    calls.append(("load_models_gpu", list(models)))
    for patcher in models:
        current_loaded_models[:] = [lm for lm in current_loaded_models if lm.model is not patcher]
        patcher.model.to(patcher.load_device)
        current_loaded_models.insert(0, LoadedModel(patcher))


def unload_all_models():
    calls.append(("unload_all_models", None))
    for loaded in list(current_loaded_models):
        loaded.model_unload()
    current_loaded_models.clear()


def soft_empty_cache(force=False):
    calls.append(("soft_empty_cache", force))
