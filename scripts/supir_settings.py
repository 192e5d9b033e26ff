"""SUPIR's Settings section, API routes and Upscaler registration."""

from modules import script_callbacks

from sd_webui_supir import api, options, runner, script_hooks
from sd_webui_supir import upscaler as _upscaler  # defining UpscalerSUPIR registers it (A1111, Forge)

script_callbacks.on_ui_settings(options.register)
script_callbacks.on_app_started(api.on_app_started)
script_callbacks.on_before_ui(_upscaler.list_in_webui)  # hosts whose upscaler list skips extensions
# A new or reloaded checkpoint: stop sharing the previous one's tensors (they would stay in RAM for us alone).
script_callbacks.on_model_loaded(lambda sd_model: runner.release(shared_only=True))
# Pasted SUPIR infotexts give width and height back as generated, not as upscaled.
script_callbacks.on_infotext_pasted(script_hooks.infotext_pasted)
