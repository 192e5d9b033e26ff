"""SUPIR's Settings section, API routes and Upscaler registration."""

from modules import script_callbacks

from sd_webui_supir import api, options, runner, script_hooks
from sd_webui_supir import upscaler as _upscaler

script_callbacks.on_ui_settings(options.register)
script_callbacks.on_app_started(api.on_app_started)
# Forge Neo and reForge list only their own upscalers: add SUPIR's before the UI reads the list.
script_callbacks.on_before_ui(_upscaler.ensure_listed)
# A new or reloaded checkpoint: stop sharing the previous one's tensors (they would stay in RAM for us alone).
script_callbacks.on_model_loaded(lambda sd_model: runner.release(shared_only=True))
# Pasted SUPIR infotexts give width and height back as generated, not as upscaled.
script_callbacks.on_infotext_pasted(script_hooks.infotext_pasted)
