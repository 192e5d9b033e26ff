import argparse

# The flags sd-webui-supir reads (plus the ones Upscaler.__init__ reads); preload.py adds --supir-models-path.
cmd_opts = argparse.Namespace(
    api_auth=None,
    use_cpu=[],
    no_half=False,
    no_half_vae=False,
    upcast_sampling=False,
    precision="autocast",
    lowvram=False,
    medvram=False,
    medvram_sdxl=False,
    supir_models_path=None,
    nowebui=False,
    disable_console_progressbars=False,
)
