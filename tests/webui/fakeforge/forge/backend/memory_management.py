"""The model manager of Forge / Forge Neo (backend/memory_management.py), with its semantics.

``current_loaded_models`` holds ``LoadedModel``s (a patcher and the device it was loaded to);
``unload_all_models`` moves every loaded patcher's model to its offload device and forgets it;
``load_models_gpu`` moves patchers' models to their load device and records them.
"""

current_loaded_models = []
calls = []  # fake only: (function name, argument) in call order


class LoadedModel:
    def __init__(self, model):
        self.model = model
        self.device = model.load_device

    def model_unload(self):
        self.model.model.to(self.model.offload_device)


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    calls.append(("load_models_gpu", list(models)))
    for patcher in models:
        current_loaded_models[:] = [lm for lm in current_loaded_models if lm.model is not patcher]
        patcher.model.to(patcher.load_device)
        current_loaded_models.insert(0, LoadedModel(patcher))


def free_memory(memory_required, device, keep_loaded=(), free_all=False):
    for loaded in list(current_loaded_models):
        if loaded.model not in keep_loaded:
            loaded.model_unload()
            current_loaded_models.remove(loaded)


def unload_all_models():
    calls.append(("unload_all_models", None))
    free_memory(1e30, None, free_all=True)


def soft_empty_cache(force=False):
    calls.append(("soft_empty_cache", force))
