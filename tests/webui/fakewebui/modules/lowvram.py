from modules import shared

module_in_gpu = None


def send_everything_to_cpu():
    global module_in_gpu
    if module_in_gpu is not None:
        module_in_gpu.to("cpu")
    module_in_gpu = None


def is_needed(sd_model):
    opts = shared.cmd_opts
    return opts.lowvram or opts.medvram or (opts.medvram_sdxl and hasattr(sd_model, "conditioner"))


def apply(sd_model):
    if is_needed(sd_model):
        sd_model.lowvram = True
    else:
        sd_model.lowvram = False
