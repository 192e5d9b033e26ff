"""shared: opts, cmd_opts, state, device, models_path, sd_upscalers (the webui's global hub)."""

import torch

from modules import options, shared_cmd_options, shared_state, shared_total_tqdm
from modules.paths_internal import data_path, models_path, script_path  # noqa: F401

cmd_opts = shared_cmd_options.cmd_opts
OptionInfo = options.OptionInfo
options_section = options.options_section

# The built-in options sd-webui-supir or the faked webui code reads, with the webui's defaults.
opts = options.Options(
    {
        "samples_save": OptionInfo(True, "Always save all generated images"),
        "samples_format": OptionInfo("png", "File format for images"),
        "save_images_before_face_restoration": OptionInfo(False, ""),
        "save_images_before_color_correction": OptionInfo(False, ""),
        "img2img_color_correction": OptionInfo(False, ""),
        "face_restoration": OptionInfo(False, "Restore faces"),
        "enable_pnginfo": OptionInfo(True, ""),
        "ESRGAN_tile": OptionInfo(192, ""),
        "ESRGAN_tile_overlap": OptionInfo(8, ""),
        "postprocessing_operation_order": OptionInfo([], ""),
        "postprocessing_disable_in_extras": OptionInfo([], ""),
        "outdir_samples": OptionInfo("", ""),
        "outdir_extras_samples": OptionInfo("outputs/extras-images", ""),
        "return_grid": OptionInfo(True, ""),
        "multiple_tqdm": OptionInfo(True, "Add a second progress bar to the console"),
    }
)
state = shared_state.State()
total_tqdm = shared_total_tqdm.TotalTQDM()
device = torch.device("cuda")  # the webui copies devices.device here at start-up; nothing runs on it in tests
sd_upscalers: list = []
sd_model = None  # the webui makes this a property over sd_models.model_data; use model_data in the fake
