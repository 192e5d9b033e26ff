"""Model management: model_data and the offload functions, with the webui's semantics."""

from modules import devices, lowvram, shared


class CheckpointInfo:
    def __init__(self, filename, title=None):
        self.filename = filename
        self.title = title or filename
        self.name = title or filename
        self.name_for_extra = self.name


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = SdModelData()
checkpoints_list: dict = {}
calls: list = []  # fake only: (function name, model) in call order


def send_model_to_cpu(m):
    calls.append(("send_model_to_cpu", m))
    if m is not None:
        if m.lowvram:
            lowvram.send_everything_to_cpu()
        else:
            m.to(devices.cpu)
    devices.torch_gc()


def model_target_device(m):
    return devices.cpu if lowvram.is_needed(m) else devices.device


def send_model_to_device(m):
    calls.append(("send_model_to_device", m))
    lowvram.apply(m)
    if not m.lowvram:
        m.to(shared.device)


def send_model_to_trash(m):
    calls.append(("send_model_to_trash", m))
    m.to(device="meta")
    devices.torch_gc()


def unload_model_weights(sd_model=None, info=None):
    send_model_to_cpu(sd_model or model_data.sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    return sd_model or model_data.sd_model


def select_checkpoint():
    return next(iter(checkpoints_list.values()), None)
